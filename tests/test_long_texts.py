"""Long documents: `long_texts="windows"` cuts texts into overlapping windows; every result is per document."""
import json
import random

import pandas as pd
import pytest
import torch
from conftest import NEGATIVE, NEUTRAL, POSITIVE, save_tiny_bert
from fastai.text.all import ClassificationInterpretation, RegressionBlock, load_learner
from fastai.torch_core import set_seed
from transformers import pipeline

import blurlite.cli as cli
from blurlite.all import (HFTextBlock, HFTextDataLoaders, aggregate_windows, hf_learner, load_pretrained_learner)
from blurlite.data import DOC_IDS

MAX_LENGTH, STRIDE = 16, 4  # windows of 14 text tokens between [CLS] and [SEP]; the tiny BERT takes 64


def long_reviews(n=80, seed=0, n_words=(30, 45), n_cues=1):
    """Texts of neutral words whose label is decided by `n_cues` sentiment words at the very end (beyond MAX_LENGTH
    tokens): truncation never sees them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = [rng.choice(NEUTRAL) for _ in range(rng.randint(*n_words))]
        words += [rng.choice(POSITIVE if label == 0 else NEGATIVE) for _ in range(n_cues)]
        rows.append({"text": " ".join(words), "label": ["positive", "negative"][label], "is_valid": i % 5 == 0})
    return pd.DataFrame(rows)


def windowed_dls(df, tiny_bert_dir, bs=8, **kwargs):
    kwargs = {"long_texts": "windows", "stride": STRIDE, **kwargs}
    return HFTextDataLoaders.from_df(df, tiny_bert_dir, valid_col="is_valid", bs=bs, max_length=MAX_LENGTH, seed=0,
                                     **kwargs)


def end_cue_reviews():
    "The synthetic task: 14 to 20 neutral words (more than a window holds), then 6 sentiment words that decide."
    return long_reviews(120, n_words=(14, 20), n_cues=6)


@pytest.fixture(scope="module")
def no_dropout_bert_dir(tmp_path_factory):
    "The tiny BERT without dropout: it learns the synthetic task in a few seconds."
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"), hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0)


def fit_end_cue(df, model_dir, **kwargs):
    set_seed(0)
    learn = hf_learner(HFTextDataLoaders.from_df(df, model_dir, valid_col="is_valid", bs=8, max_length=MAX_LENGTH,
                                                 seed=0, **kwargs))
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(20, 3e-3)
    return learn


@pytest.fixture(scope="module")
def trained(no_dropout_bert_dir):
    "A windowed learner trained on the synthetic end-cue task (shared: tests only read it)."
    df = end_cue_reviews()
    return fit_end_cue(df, no_dropout_bert_dir, long_texts="windows", stride=STRIDE), df


# window construction
def test_windows_match_the_fast_tokenizers_overflow_and_cover_every_token(tiny_objects):
    tok = tiny_objects.hf_tokenizer
    text = " ".join(random.Random(1).choice(NEUTRAL + POSITIVE) for _ in range(50))
    block = HFTextBlock(*tiny_objects, max_length=MAX_LENGTH, long_texts="windows", stride=STRIDE)
    tfm = block.type_tfms[0]
    doc = tfm.tokenize([text])[0]
    windows = [w.tolist() for w in doc["input_ids"]]
    reference = tok(text, truncation=True, max_length=MAX_LENGTH, stride=STRIDE, return_overflowing_tokens=True)
    assert windows == reference["input_ids"] and len(windows) > 3
    assert all(len(w) <= MAX_LENGTH and w[0] == tok.cls_token_id and w[-1] == tok.sep_token_id for w in windows)
    assert all(len(w) == MAX_LENGTH for w in windows[:-1])
    contents = [w[1:-1] for w in windows]
    assert all(a[-STRIDE:] == b[:STRIDE] for a, b in zip(contents, contents[1:]))  # `stride` tokens of overlap
    merged = contents[0] + [t for c in contents[1:] for t in c[STRIDE:]]
    assert merged == tok(text, add_special_tokens=False)["input_ids"]  # every token, once, in order
    assert all(len(m) == len(w) for m, w in zip(doc["attention_mask"], doc["input_ids"]))
    assert str(tfm.decodes(doc)) == tok.decode(merged)


def test_a_short_text_is_one_window_equal_to_its_truncated_tokens(tiny_objects):
    windowed = HFTextBlock(*tiny_objects, max_length=MAX_LENGTH, long_texts="windows").type_tfms[0]
    plain = HFTextBlock(*tiny_objects, max_length=MAX_LENGTH).type_tfms[0]
    doc, single = windowed.tokenize(["good movie"])[0], plain.tokenize(["good movie"])[0]
    assert len(doc["input_ids"]) == 1 and all(torch.equal(doc[k][0], single[k]) for k in single)


def test_text_pairs_keep_the_first_text_whole_in_every_window(tiny_objects):
    tok = tiny_objects.hf_tokenizer
    tfm = HFTextBlock(*tiny_objects, max_length=MAX_LENGTH, long_texts="windows", stride=2).type_tfms[0]
    second = " ".join(["movie", "film", "plot", "actor"] * 6)
    doc = tfm.tokenize([("good film", second)])[0]
    first_ids = tok("good film")["input_ids"]  # [CLS] good film [SEP]
    assert len(doc["input_ids"]) > 2
    assert all(w.tolist()[:len(first_ids)] == first_ids for w in doc["input_ids"])
    decoded = tfm.decodes(doc)
    assert (str(decoded.text), str(decoded.text_pair)) == ("good film", second)
    with pytest.raises(ValueError, match="first text of a pair whole"):
        tfm.tokenize([(" ".join(["movie"] * 30), "good")])


@pytest.mark.parametrize("kwargs, message", [
    (dict(long_texts="split"), "long_texts must be one of"), (dict(stride=14), "stride must be an int from 0 to 13"),
    (dict(stride=-1), "stride must be"), (dict(window_agg="median"), "window_agg must be one of"),
    (dict(truncation=False), "leave truncation=True")])
def test_bad_window_settings_fail_clearly(tiny_objects, kwargs, message):
    with pytest.raises(ValueError, match=message):
        HFTextBlock(*tiny_objects, max_length=MAX_LENGTH, **{"long_texts": "windows", **kwargs})


def test_stride_without_windows_fails_clearly(tiny_objects):
    with pytest.raises(ValueError, match="for long_texts='windows'"):
        HFTextBlock(*tiny_objects, max_length=MAX_LENGTH, stride=4)


# split integrity and per-document results
def test_training_items_are_windows_of_training_documents_only(tiny_bert_dir):
    df = long_reviews(24)
    dls = windowed_dls(df, tiny_bert_dir)
    train_texts = set(df.text[~df.is_valid])
    assert (len(dls.train_ds), len(dls.valid_ds)) == (len(train_texts), df.is_valid.sum())
    assert dls.train.n == sum(dls.train.n_windows) > len(train_texts)
    decode = dls.train_ds.tls[0].tfms.decode
    for i in range(dls.train.n):
        x, y = dls.train.create_item(i)
        doc = int(dls.train.window_doc[i])
        text = dls.train.items.text.iloc[doc]
        assert text in train_texts and str(decode(x)) in text and y == dls.train_ds[doc][1]
    assert len(dls.train) == dls.train.n // 8  # batches of `bs` windows (drop_last, as fastai's training loader)
    batch = dls.valid.one_batch()  # `bs` documents, all their windows
    assert len(batch[1]) == min(8, len(dls.valid_ds)) == int(batch[0][DOC_IDS].max()) + 1
    assert len(batch[0][DOC_IDS]) == len(batch[0]["input_ids"]) > len(batch[1])


def test_get_preds_are_per_document_and_equal_the_mean_of_window_logits(trained):
    learn, df = trained
    probs, targets = learn.get_preds()
    valid = df[df.is_valid].reset_index(drop=True)
    assert probs.shape == (len(valid), 2) and len(targets) == len(valid)
    tfm, model = learn.dls.train_ds.tls[0].tfms.fs[-1], learn.model.hf_model.eval()
    for i in (0, 7, len(valid) - 1):
        doc = tfm.tokenize([valid.text[i]])[0]
        with torch.no_grad():
            logits = torch.cat([model(input_ids=w[None], attention_mask=m[None]).logits
                                for w, m in zip(doc["input_ids"], doc["attention_mask"])])
        assert torch.allclose(probs[i], logits.mean(0).softmax(-1), atol=1e-5)
        assert targets[i] == learn.dls.vocab.o2i[valid.label[i]]
    first = learn.hf_predict(list(valid.text), top_k=None)[0][0]
    assert first["score"] == pytest.approx(float(probs[0].max()), abs=1e-5)


def test_windows_learn_a_label_at_the_end_that_truncation_cannot_see(trained, no_dropout_bert_dir):
    learn, df = trained
    cues = set(POSITIVE + NEGATIVE)  # every text's first window (MAX_LENGTH - 2 words) holds none of them
    assert not any(cues & set(t.split()[:MAX_LENGTH - 2]) for t in df.text)
    windows_accuracy = float(learn.validate()[1])
    truncation_accuracy = float(fit_end_cue(df, no_dropout_bert_dir).validate()[1])
    print(f"\nsynthetic end-cue task: windows accuracy {windows_accuracy:.2f}, truncation {truncation_accuracy:.2f}")
    assert windows_accuracy >= 0.9 and truncation_accuracy <= 0.7  # 24 validation texts, half of each label


def test_aggregation_mean_and_max_of_window_rows():
    preds = torch.tensor([[1.0, -1.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    doc_ids = torch.tensor([0, 0, 1, 2])
    assert torch.equal(aggregate_windows(preds, doc_ids), torch.tensor([[2.0, -0.5], [0.0, 2.0], [5.0, 5.0]]))
    assert torch.equal(aggregate_windows(preds, doc_ids, "max"), torch.tensor([[3.0, 0.0], [0.0, 2.0], [5.0, 5.0]]))


def test_window_agg_max_is_used_by_validation_and_hf_predict(tiny_bert_dir):
    df = long_reviews(24)
    learn = hf_learner(windowed_dls(df, tiny_bert_dir, window_agg="max"))
    probs, _ = learn.get_preds()
    text = df.text[df.is_valid].iloc[0]
    doc = learn.dls.train_ds.tls[0].tfms.fs[-1].tokenize([text])[0]
    with torch.no_grad():
        logits = torch.cat([learn.model.hf_model.eval()(input_ids=w[None]).logits for w in doc["input_ids"]])
    assert torch.allclose(probs[0], logits.max(0).values.softmax(-1), atol=1e-5)
    assert learn.hf_predict([text])[0]["score"] == pytest.approx(float(probs[0].max()), abs=1e-5)


def test_a_very_long_document_runs_in_chunks_of_bs_windows(trained):
    learn, _ = trained
    text = " ".join(["the movie was very"] * 400 + ["good"])  # 1,601 words: 160 windows of 14 tokens
    n_windows = len(learn.dls.train_ds.tls[0].tfms.fs[-1].tokenize([text])[0]["input_ids"])
    calls = []
    hook = learn.model.hf_model.register_forward_hook(lambda m, i, o: calls.append(o.logits.shape[0]))
    try:
        label, _, probs = learn.predict(text)
        result = learn.hf_predict([text], bs=8)[0]
    finally:
        hook.remove()
    assert n_windows == 160 and max(calls) <= 8 and sum(calls) == 2 * n_windows
    assert result["label"] == label and result["score"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_show_results_and_top_losses_show_whole_documents(trained, shown):
    learn, df = trained
    learn.show_results(max_n=4, trunc_at=None)
    frame = shown[-1]
    assert len(frame) == 4 and set(frame.text) <= set(df.text[df.is_valid])  # whole texts, not windows
    interp = ClassificationInterpretation.from_learner(learn)
    assert len(interp.losses) == df.is_valid.sum()
    interp.plot_top_losses(3, trunc_at=None)
    assert len(shown[-1]) == 3 and set(shown[-1].text) <= set(df.text[df.is_valid])
    assert interp.confusion_matrix().sum() == df.is_valid.sum()


def test_use_hf_loss_gives_each_window_its_documents_target(tiny_bert_dir):
    learn = hf_learner(windowed_dls(long_reviews(24), tiny_bert_dir), use_hf_loss=True)
    loss, accuracy, _ = learn.validate()
    assert torch.isfinite(torch.tensor(loss)) and 0 <= accuracy <= 1


def test_text_regression_with_windows_is_per_document(tiny_bert_dir):
    df = long_reviews(24)
    df["score"] = [float(i % 3) for i in range(len(df))]
    dls = HFTextDataLoaders.from_df(df, tiny_bert_dir, label_col="score", y_block=RegressionBlock(),
                                    valid_col="is_valid", bs=8, max_length=MAX_LENGTH, long_texts="windows")
    preds, targets = hf_learner(dls).get_preds()
    assert preds.shape == (df.is_valid.sum(), 1)
    assert torch.equal(targets.view(-1), torch.tensor(df.score[df.is_valid].values, dtype=torch.float32))


def test_text_pairs_and_multi_label_are_per_document(tiny_bert_dir):
    df = long_reviews(30)
    df["first"] = ["a film" if i % 2 else "the movie" for i in range(len(df))]
    dls = windowed_dls(df, tiny_bert_dir, text_col=["first", "text"])
    learn = hf_learner(dls)
    probs, _ = learn.get_preds()
    assert probs.shape == (df.is_valid.sum(), 2) and dls.train.n > len(dls.train_ds)
    pair = ("a film", df.text[df.is_valid].iloc[0])
    assert learn.hf_predict([pair])[0]["score"] == pytest.approx(float(probs[0].max()), abs=1e-5)
    df["tags"] = ["positive;long" if i % 3 else "negative" for i in range(len(df))]
    multi = hf_learner(windowed_dls(df, tiny_bert_dir, label_col="tags", label_delim=";"))
    probs, targets = multi.get_preds()
    assert probs.shape == targets.shape == (df.is_valid.sum(), 3) and 0 <= probs.min() and probs.max() <= 1


# saving keeps the setting
def test_save_pretrained_and_export_round_trips_keep_windows(trained, tmp_path):
    learn, df = trained
    texts = list(df.text[df.is_valid][:4]) + [" ".join(["movie"] * 300 + ["awful"])]
    expected = learn.hf_predict(texts, top_k=None)
    learn.save_pretrained(tmp_path / "model")
    block = json.loads((tmp_path / "model" / "blurlite.json").read_text())["block"]
    assert (block["long_texts"], block["stride"], block["window_agg"]) == ("windows", STRIDE, "mean")
    loaded = load_pretrained_learner(tmp_path / "model")
    learn.export(tmp_path / "export.pkl")
    exported = load_learner(tmp_path / "export.pkl")
    for other in (loaded, exported):
        got = other.hf_predict(texts, top_k=None)
        assert [[r["label"] for r in g] for g in got] == [[r["label"] for r in e] for e in expected]
        assert all(abs(a["score"] - b["score"]) < 1e-5 for g, e in zip(got, expected) for a, b in zip(g, e))
        assert other.predict(texts[-1])[0] == expected[-1][0]["label"]
    # the pipeline has no windows: with truncation=True it scores the first max_length tokens, as a truncating learner
    pipe = pipeline("text-classification", model=str(tmp_path / "model"))
    assert pipe(texts[-1], truncation=True)[0]["label"] in learn.dls.vocab


def test_command_line_trains_with_windows_and_predicts_long_texts(tiny_bert_dir, tmp_path, capsys):
    data = tmp_path / "long.csv"
    long_reviews(40).to_csv(data, index=False)
    out = tmp_path / "model"
    code = cli.main(["train", "--data", str(data), "--model", str(tiny_bert_dir), "--valid-col", "is_valid",
                     "--epochs", "1", "--bs", "8", "--max-length", str(MAX_LENGTH), "--long-texts", "windows",
                     "--stride", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    block = json.loads((out / "blurlite.json").read_text())["block"]
    assert (block["long_texts"], block["stride"]) == ("windows", 3)
    capsys.readouterr()
    assert cli.main(["predict", str(out), " ".join(["movie"] * 2000 + ["good"]), "a film"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(json.loads(line)["label"] in ("positive", "negative") for line in lines)
    assert cli.main(["train", "--data", str(data), "--model", str(tiny_bert_dir), "--stride", "3"]) != 0
    assert "--stride is for --long-texts windows" in capsys.readouterr().err
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(long_reviews(10).text))
    assert cli.main(["train", "--task", "masked-lm", "--data", str(corpus), "--model", str(tiny_bert_dir),
                     "--long-texts", "windows"]) != 0
    assert "task 'fill-mask' has no windows" in capsys.readouterr().err
