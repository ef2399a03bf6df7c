"""Every row of the bad-input table: a clear error at dataloaders() time naming the row, column or label."""
import numpy as np
import pandas as pd
import pytest
from conftest import make_reviews, tiny_dls
from fastai.text.all import CategoryBlock, ColReader, ColSplitter, DataBlock

from blurlite.all import HFTextBlock, HFTextDataLoaders, hf_learner


def from_df(df, ckpt, **kwargs):
    return HFTextDataLoaders.from_df(df, ckpt, valid_col="is_valid", bs=kwargs.pop("bs", 8), **kwargs)


def test_empty_dataframe(tiny_bert_dir, tiny_objects):
    empty = make_reviews(10).iloc[:0]
    with pytest.raises(ValueError, match="DataFrame is empty"):
        from_df(empty, tiny_bert_dir)
    with pytest.raises(ValueError, match="data is empty"):
        tiny_dls(empty, tiny_objects)


@pytest.mark.parametrize("bad", [None, np.nan, pd.NA])
def test_missing_text_names_row_and_column(tiny_bert_dir, tiny_objects, bad):
    df = make_reviews(20)
    df["text"] = df["text"].astype(object)
    df.loc[7, "text"] = bad
    with pytest.raises(ValueError, match="row 7 in column 'text': the text is missing"):
        from_df(df, tiny_bert_dir)
    with pytest.raises(ValueError, match="row 7, column 'text': the text is missing"):
        tiny_dls(df, tiny_objects)


def test_non_str_text_names_row_and_column(tiny_bert_dir, tiny_objects):
    df = make_reviews(20)
    df["text"] = df["text"].astype(object)
    df.loc[4, "text"] = 123
    with pytest.raises(TypeError, match="row 4 in column 'text': expected a str text, got int"):
        from_df(df, tiny_bert_dir)
    with pytest.raises(TypeError, match="row 4, column 'text': expected a str"):
        tiny_dls(df, tiny_objects)


def test_missing_side_of_a_pair_names_row(tiny_bert_dir):
    df = make_reviews(20)
    df["other"] = "the plot"
    df.loc[3, "other"] = None
    with pytest.raises(ValueError, match="row 3 in column 'other': the text is missing"):
        from_df(df, tiny_bert_dir, text_col=["text", "other"])


def test_missing_labels_name_rows(tiny_bert_dir, tiny_objects):
    df = make_reviews(20)
    df.loc[[2, 9], "label"] = np.nan
    with pytest.raises(ValueError, match=r"column 'label': 2 missing label\(s\).*row\(s\) 2, 9"):
        from_df(df, tiny_bert_dir)
    numeric = make_reviews(20).assign(label=[0.0, 1.0] * 10)
    numeric.loc[6, "label"] = np.nan  # a training row
    with pytest.raises(ValueError, match="training set, row 6: Label 'nan' was not included"):
        tiny_dls(numeric, tiny_objects)
    numeric.loc[6, "label"], numeric.loc[5, "label"] = 0.0, np.nan  # a validation row
    with pytest.raises(ValueError, match="validation set, row 5: Label 'nan' was not included"):
        tiny_dls(numeric, tiny_objects)


def test_mixed_type_labels(tiny_bert_dir):
    df = make_reviews(21)
    df["label"] = pd.Series([1, "1", 2.0] * 7, dtype=object)
    with pytest.raises(TypeError, match=r"column 'label' mixes label types \(int 1 at row 0; str '1' at row 1; "
                                        r"float 2.0 at row 2\)"):
        from_df(df, tiny_bert_dir)


def test_batch_size_larger_than_training_set(tiny_bert_dir, tiny_objects):
    df = make_reviews(20)  # 16 training rows
    with pytest.raises(ValueError, match="bs=32 is larger than the training set \\(16 rows\\)"):
        from_df(df, tiny_bert_dir, bs=32)
    with pytest.raises(ValueError, match="bs=17 is larger than the training set"):
        tiny_dls(df, tiny_objects, bs=17)


def test_unseen_validation_label_names_label_and_row(tiny_bert_dir, tiny_objects):
    df = make_reviews(20)
    df.loc[5, "label"] = "surprised"  # row 5 is a validation row
    with pytest.raises(ValueError, match="validation row 5, column 'label': label 'surprised' never appears"):
        from_df(df, tiny_bert_dir)
    with pytest.raises(ValueError, match="validation set, row 5: Label 'surprised' was not included"):
        tiny_dls(df, tiny_objects)


def test_unseen_label_at_inference_with_labels_names_row(tiny_objects, reviews):
    dls = tiny_dls(reviews, tiny_objects)
    test = reviews.iloc[:4].copy()
    test.loc[2, "label"] = "meh"
    with pytest.raises(ValueError, match="row 2: Label 'meh' was not included"):
        dls.test_dl(test, with_labels=True)


def test_missing_column_lists_the_columns(tiny_bert_dir):
    with pytest.raises(KeyError, match="text column\\(s\\) \\['review'\\] not in the DataFrame"):
        from_df(make_reviews(20), tiny_bert_dir, text_col="review")


def test_one_hot_label_columns_must_be_binary(tiny_bert_dir):
    df = make_reviews(20).assign(a=1, b=0)
    df.loc[6, "b"] = 2
    with pytest.raises(ValueError, match="column 'b'.*row 6 holds 2"):
        from_df(df, tiny_bert_dir, label_col=["a", "b"])


def test_valid_column_must_be_boolean(tiny_bert_dir):
    df = make_reviews(20)
    df["is_valid"] = df["is_valid"].astype(object)
    df.loc[1, "is_valid"] = "yes"
    with pytest.raises(ValueError, match="column 'is_valid' must be True/False; row 1 holds 'yes'"):
        from_df(df, tiny_bert_dir)


def test_texts_longer_than_the_model_are_truncated_not_a_crash(tiny_bert_dir):
    df = make_reviews(20)
    df.loc[0, "text"] = " ".join(["movie"] * 5000)
    learn = hf_learner(from_df(df, tiny_bert_dir))
    assert learn.predict(" ".join(["film"] * 5000))[0] in ("positive", "negative")
    assert len(learn.hf_predict([" ".join(["film"] * 5000)])) == 1
