import json
import random
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import NEGATIVE, NEUTRAL, POSITIVE, VOCAB, tiny_bert_config
from fastai.text.all import ColReader, ColSplitter, DataBlock
from fastai.torch_core import set_seed
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForTokenClassification, BertForTokenClassification, BertTokenizer, pipeline

from blurlite.all import (IGNORE_INDEX, HFTokenClassBlock, HFTokenizeWords, TokenCategoryBlock,
                          TokenCrossEntropyLossFlat, align_word_labels, get_hf_objects, hf_learner, read_conll)

LABELS = ["O", "B-POS", "I-POS", "B-NEG", "I-NEG"]
TEXTS = ["good movie was bad plot .", "the goods , the goods and badly !", "a film",
         "lovely movie movie and terrible plot plot , great"]


def make_sentences(n=120, seed=0):
    "Sentences with POS spans (positive word [+ 'movie']) and NEG spans (negative word [+ 'plot'])."
    rng, rows = random.Random(seed), []
    for i in range(n):
        words, tags = [], []
        for _ in range(rng.randint(2, 8)):
            kind = rng.random()
            if kind < 0.25:
                words.append(rng.choice(POSITIVE + ["goods"]))
                tags.append("B-POS")
                if rng.random() < 0.5:
                    words.append("movie"), tags.append("I-POS")
            elif kind < 0.5:
                words.append(rng.choice(NEGATIVE + ["badly"]))
                tags.append("B-NEG")
                if rng.random() < 0.5:
                    words.append("plot"), tags.append("I-NEG")
            else:
                words.append(rng.choice(["the", "a", "was", "and", "film", "actor", ".", ",", "!"]))
                tags.append("O")
        rows.append((words, tags, i % 5 == 0))
    return pd.DataFrame(rows, columns=["words", "tags", "is_valid"])


@pytest.fixture(scope="session")
def tiny_ner_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-ner")
    torch.manual_seed(0)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(path)
    BertForTokenClassification(tiny_bert_config(num_labels=len(LABELS))).save_pretrained(path)
    return path


def ner_dls(df, hf_objects, bs=8, **kwargs):
    return DataBlock(blocks=(HFTokenClassBlock(*hf_objects, **kwargs), TokenCategoryBlock(vocab=LABELS)),
                     get_x=ColReader("words"), get_y=ColReader("tags"),
                     splitter=ColSplitter("is_valid")).dataloaders(df, bs=bs)


def ner_objects(path):
    return get_hf_objects(path, model_cls=AutoModelForTokenClassification)


@pytest.fixture(scope="module")
def trained(tiny_ner_dir):
    "A tiny NER learner trained until it finds entities (built once for the module)."
    set_seed(0)  # python's random too: fastai's shuffling draws from it
    objs = ner_objects(tiny_ner_dir)
    learn = hf_learner(ner_dls(make_sentences(), objs), objs.hf_model)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(8, 5e-3)
    return learn


@pytest.fixture
def shown_ner(monkeypatch):
    import blurlite.tasks.token_classification as tc

    frames = []
    monkeypatch.setattr(tc, "display_df", frames.append)
    return frames


# alignment
def test_first_labels_first_subtoken_only():
    assert align_word_labels([None, 0, 0, 1, None], [7, 8]) == [IGNORE_INDEX, 7, IGNORE_INDEX, 8, IGNORE_INDEX]


def test_all_labels_every_subtoken():
    assert align_word_labels([None, 0, 0, 1, None], [7, 8], first_only=False) == [IGNORE_INDEX, 7, 7, 8, IGNORE_INDEX]


WORD = st.one_of(st.sampled_from(VOCAB[5:] + ["goods", "badly", "", " ", "\u200b", "\x00", "é", "日本"]),
                 st.text(max_size=6))


@settings(max_examples=150, deadline=None)
@given(words=st.lists(WORD, min_size=1, max_size=12), first=st.booleans())
def test_every_labelled_word_keeps_its_label_and_nothing_else_is_labelled(tiny_ner_dir, words, first):
    tokenizer = BertTokenizer.from_pretrained(tiny_ner_dir)
    x = HFTokenizeWords(tokenizer)(words)
    word_ids = x["word_ids"].tolist()
    labels = list(range(len(words)))  # word i carries label i: any shift shows
    aligned = align_word_labels([None if w < 0 else w for w in word_ids], labels, first_only=first)
    seen = set()
    for position, (word, label) in enumerate(zip(word_ids, aligned)):
        if word < 0:  # special tokens
            assert label == IGNORE_INDEX
        elif word not in seen:  # a word's first sub-token
            assert label == word
        else:
            assert label == (IGNORE_INDEX if first else word)
        seen.add(word)
    covered = {w for w in word_ids if w >= 0}
    assert all(words[i].strip() == "" or i in covered for i in range(len(words))
               if tokenizer.tokenize(words[i]))  # every word with tokens is labelled


# CoNLL
def test_read_conll_splits_on_blank_and_whitespace_lines(tmp_path):
    f = tmp_path / "x.conll"
    f.write_text("EU\tB-ORG\nrejects\tO\n\t\nGerman\tB-MISC\ncall\tO\n\n\nPeter\tB-PER\n")
    df = read_conll(f)
    assert df.words.tolist() == [["EU", "rejects"], ["German", "call"], ["Peter"]]
    assert df.tags.tolist() == [["B-ORG", "O"], ["B-MISC", "O"], ["B-PER"]]


def test_read_conll_names_a_bad_line(tmp_path):
    f = tmp_path / "bad.conll"
    f.write_text("EU\tB-ORG\nrejects\n")
    with pytest.raises(ValueError, match="line 2: expected 'token<TAB>tag'"):
        read_conll(f)


def test_read_wnut17():
    from test_real_wnut import WNUT

    df = read_conll(WNUT)
    assert len(df) == 3394 and all(len(w) == len(t) for w, t in zip(df.words, df.tags))


# data
def test_batches_pad_labels_with_ignore_index(tiny_ner_dir):
    dls = ner_dls(make_sentences(40), ner_objects(tiny_ner_dir))
    x, y = dls.one_batch()
    assert y.shape == x["input_ids"].shape and (y[x["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert (y[:, 0] == IGNORE_INDEX).all()  # [CLS]


def test_show_batch_and_results_at_word_level(trained, shown_ner):
    trained.dls.show_batch(max_n=2)
    frame = shown_ner[-1]
    assert list(frame.columns) == ["words", "target"]
    words, target = frame.words[0].split(" "), frame.target[0].split(" ")
    assert [t.rsplit("/", 1)[0] for t in target] == words and all(t.rsplit("/", 1)[1] in LABELS for t in target)
    trained.show_results(max_n=2)
    assert list(shown_ner[-1].columns) == ["words", "target", "prediction"]


def test_padding_max_length_keeps_word_counts(tiny_ner_dir):
    df = make_sentences(40)
    dls = ner_dls(df, ner_objects(tiny_ner_dir), max_length=32, padding="max_length")
    x, y = dls.valid.one_batch()
    assert x["input_ids"].shape[1] == y.shape[1] == 32 and x["n_words"].shape[1] == 1
    words, tags = dls.valid.decode_batch((x, y), max_n=1)[0]
    assert (list(words), list(tags)) in [(list(w), list(t)) for w, t in zip(df.words, df.tags)]


# training and metrics
def test_metrics_in_the_training_table_match_seqeval(trained):
    import seqeval.metrics

    names = [m.name for m in trained.metrics]
    assert names == ["entity_precision", "entity_recall", "entity_f1", "token_accuracy"]
    values = dict(zip(names, trained.validate()[1:]))
    valid = trained.dls.valid_ds.items
    preds = [list(trained.predict(list(w))[0]) for w in valid.words]
    assert values["entity_f1"] == pytest.approx(seqeval.metrics.f1_score([list(t) for t in valid.tags], preds))
    assert values["token_accuracy"] == pytest.approx(seqeval.metrics.accuracy_score([list(t) for t in valid.tags], preds))
    assert values["entity_f1"] > 0.8  # it learned the spans


def test_get_preds_gives_one_row_of_probabilities_per_sentence(trained):
    "Validation batches are padded to different lengths; get_preds pads them to one: a row per sentence."
    preds, targs = trained.get_preds()
    assert len(preds) == len(targs) == len(trained.dls.valid_ds)
    for p, t in zip(preds, targs):
        assert p.shape == (*t.shape, len(trained.dls.vocab))
        assert torch.allclose(p.sum(-1), torch.ones(t.shape))
    decoded = trained.loss_func.decodes(preds)
    assert [d.shape for d in decoded] == [t.shape for t in targs]


def test_all_ignored_batch_gives_zero_loss_not_nan():
    loss = TokenCrossEntropyLossFlat()(torch.randn(2, 3, 5, requires_grad=True), torch.full((2, 3), IGNORE_INDEX))
    assert loss.item() == 0.0
    loss.backward()


# inference
def test_predict_returns_one_label_per_input_word(trained):
    words = ["good", "", "movie", "was", "\x00", "bad"]
    labels, _, _ = trained.predict(words)
    assert len(labels) == len(words) and labels[1] is None and labels[4] is None  # no token, no label
    assert labels[0] == "B-POS" and labels[5] == "B-NEG"  # the empty words shift nothing
    assert trained.predict("good movie was bad")[0] == [labels[0], labels[2], labels[3], labels[5]]


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_predict_entities_equals_the_pipeline(trained, strategy):
    tokenizer = trained.dls.train_ds.tls[0].tfms.fs[-1].hf_tokenizer
    reference = pipeline("token-classification", model=trained.model.hf_model, tokenizer=tokenizer,
                         aggregation_strategy=strategy)
    found = 0
    for text in TEXTS:
        ours, theirs = trained.predict_entities(text, aggregation_strategy=strategy), reference(text)
        key = "entity_group" if strategy != "none" else "entity"
        assert [(e[key], e["word"], e["start"], e["end"]) for e in ours] == \
               [(e[key], e["word"], e["start"], e["end"]) for e in theirs]
        assert [float(e["score"]) for e in ours] == pytest.approx([float(e["score"]) for e in theirs], abs=1e-4)
        found += len(ours)
    assert found >= 4  # the comparison is not between empty lists


def test_predict_entities_on_a_list_equals_one_call_per_text_in_order(trained):
    texts = TEXTS + ["good " * 40 + "movie", "bad"]  # mixed lengths: run longest first, returned in input order
    one_by_one = [trained.predict_entities(t) for t in texts]
    for bs in (1, 3, 16):
        got = trained.predict_entities(texts, bs=bs)
        assert [[(e["entity_group"], e["start"], e["end"]) for e in r] for r in got] == \
               [[(e["entity_group"], e["start"], e["end"]) for e in r] for r in one_by_one]
        assert [float(e["score"]) for r in got for e in r] == \
               pytest.approx([float(e["score"]) for r in one_by_one for e in r], abs=1e-4)
    assert sum(map(len, one_by_one)) >= 4 and trained.predict_entities([]) == []
    with pytest.raises(TypeError, match="item 1 is int"):
        trained.predict_entities(["good", 3])


def test_long_texts_are_covered_by_windows(trained):
    words = ["the"] * 100 + ["good"]  # past the model's 64 positions
    entities = trained.predict_entities(" ".join(words))
    assert any(e["word"] == "good" and e["start"] == 400 for e in entities)
    with pytest.warns(UserWarning, match="labelled None by predict"):
        labels = trained.predict(words)[0]
    assert len(labels) == len(words) and labels[-1] is None
    with pytest.warns(UserWarning, match="aggregation_strategy='none'"):
        trained.predict_entities(" ".join(words), aggregation_strategy="none")


def test_predict_entities_is_for_token_classification_only(tiny_bert_dir):
    from conftest import make_reviews

    from blurlite.all import HFTextDataLoaders

    learn = hf_learner(HFTextDataLoaders.from_df(make_reviews(20), tiny_bert_dir, valid_col="is_valid", bs=4))
    with pytest.raises(TypeError, match="predict_entities is for token-classification"):
        learn.predict_entities("good movie")


EXPORT_CHECK = textwrap.dedent("""
    import json, sys
    from fastai.text.all import load_learner
    learn = load_learner(sys.argv[1])
    texts = json.loads(sys.argv[2])
    out = {"predict": [learn.predict(t)[0] for t in texts],
           "entities": [[{**e, "score": float(e["score"])} for e in learn.predict_entities(t, aggregation_strategy="first")]
                        for t in texts]}
    print(json.dumps(out))
""")


def test_export_then_load_learner_in_a_fresh_process(trained, tmp_path):
    fname = tmp_path / "ner.pkl"
    trained.export(fname)
    out = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(fname), json.dumps(TEXTS)],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["predict"] == [trained.predict(t)[0] for t in TEXTS]
    expected = [trained.predict_entities(t, aggregation_strategy="first") for t in TEXTS]
    assert [[(e["entity_group"], e["word"], e["start"], e["end"]) for e in r] for r in got["entities"]] == \
           [[(e["entity_group"], e["word"], e["start"], e["end"]) for e in r] for r in expected]
    assert [e["score"] for r in got["entities"] for e in r] == pytest.approx(
        [float(e["score"]) for r in expected for e in r], abs=1e-6)


# bad input
def test_words_and_labels_of_different_lengths_name_the_row(tiny_ner_dir):
    df = make_sentences(20)
    df.at[3, "tags"] = df.tags[3][:-1]
    with pytest.raises(ValueError, match=r"training set, row 3: \d+ words but \d+ labels"):
        ner_dls(df, ner_objects(tiny_ner_dir))


def test_label_missing_from_the_vocab_names_the_row(tiny_ner_dir):
    df = make_sentences(20)
    df.at[5, "tags"] = ["B-XYZ"] + df.tags[5][1:]
    with pytest.raises(ValueError, match="validation set, row 5: label 'B-XYZ' is not in the label vocab"):
        ner_dls(df, ner_objects(tiny_ner_dir))


def test_a_string_where_words_are_expected_names_the_row(tiny_ner_dir):
    df = make_sentences(20)
    df["words"] = df["words"].astype(object)
    df.at[2, "words"] = " ".join(df.words[2])
    with pytest.raises(TypeError, match="row 2, column 'words': the words are one str"):
        ner_dls(df, ner_objects(tiny_ner_dir))


def test_num_labels_must_come_from_the_label_vocab(tiny_bert_dir):
    objs = get_hf_objects(tiny_bert_dir, model_cls=AutoModelForTokenClassification)  # 2 labels
    with pytest.raises(ValueError, match="2 outputs but the label vocab has 5 labels"):
        hf_learner(ner_dls(make_sentences(20), objs), objs.hf_model)


def test_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="needs a fast tokenizer"):
        HFTokenizeWords(Slow())


# fastai habits (issue 16): one padded tensor from get_preds, tta, Interpretation, word-level predict
def test_get_preds_is_one_tensor_padded_with_ignored_positions(trained):
    with trained.no_bar():
        inputs, probs, targets, decoded = trained.get_preds(with_input=True, with_decoded=True)
    n, longest = len(trained.dls.valid_ds), max(len(x["input_ids"]) for x, _ in trained.dls.valid_ds)
    length = trained.dls.valid.batch_length(longest)  # the longest batch (rounded up on CUDA)
    assert probs.shape == (n, length, len(LABELS)) and targets.shape == decoded.shape == (n, length)
    assert inputs["input_ids"].shape == (n, length)
    padding = inputs["attention_mask"] == 0
    assert padding.any() and (targets[padding] == IGNORE_INDEX).all()
    assert torch.equal(decoded, probs.argmax(-1))


def test_tta_and_interpretation_work_at_token_level(trained, shown_ner):
    from fastai.interpret import ClassificationInterpretation

    with trained.no_bar():
        preds, targets = trained.tta(n=1)
        assert preds.shape[:2] == targets.shape
        interp = ClassificationInterpretation.from_learner(trained)
    matrix = interp.confusion_matrix()  # labelled tokens (each word's first sub-token); ignored ones drop out
    assert matrix.shape == (len(LABELS),) * 2 and matrix.sum() == int((targets != IGNORE_INDEX).sum())
    assert np.trace(matrix) / matrix.sum() > 0.8
    losses, _ = interp.top_losses(3)
    interp.plot_top_losses(3)
    assert len(shown_ner[-1]) == 3 and len(losses) == 3


def test_predict_answers_one_label_id_and_probability_row_per_word(trained):
    words = ["good", "movie", "and", "a", "boring", "plot", "!"]
    labels, ids, probs = trained.predict(words)
    assert len(labels) == len(ids) == probs.shape[0] == len(words) and probs.shape[1] == len(LABELS)
    assert torch.equal(ids, probs.argmax(-1)) and list(labels) == [trained.dls.vocab[i] for i in ids]
    assert probs.sum(-1).tolist() == pytest.approx([1.0] * len(words), abs=1e-5)


def test_factory_vocab_takes_every_split_and_warns_on_validation_only_tags(tiny_bert_dir):
    from blurlite.all import HFTokenClassDataLoaders

    df = make_sentences(20)
    df.at[5, "tags"] = ["B-RARE"] + df.tags[5][1:]  # row 5 is a validation row (i % 5 == 0)
    with pytest.warns(UserWarning, match=r"'B-RARE' \(e.g. row 5\) appear only in validation rows"):
        dls = HFTokenClassDataLoaders.from_df(df, tiny_bert_dir, valid_col="is_valid", bs=4)
    assert "B-RARE" in list(dls.vocab)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HFTokenClassDataLoaders.from_df(make_sentences(20), tiny_bert_dir, valid_col="is_valid", bs=4)
