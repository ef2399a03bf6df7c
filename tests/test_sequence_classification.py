import json
import subprocess
import sys
import textwrap

import matplotlib
import pandas as pd
import pytest
import torch
from conftest import make_reviews, tiny_dls
from fastai.text.all import (BCEWithLogitsLossFlat, ClassificationInterpretation, CrossEntropyLossFlat,
                             load_learner)
from transformers import pipeline

from blurlite.all import HFTextDataLoaders, get_hf_objects, hf_learner

matplotlib.use("Agg")
TEXTS = ["good movie", "the plot was bad and the actor was poor , very boring !", "a film",
         "nice lovely film and great actor", "the movie was the movie was the movie and the film is fine"]


@pytest.fixture
def learn(tiny_objects, reviews):
    return hf_learner(tiny_dls(reviews, tiny_objects), tiny_objects.hf_model)


def multi_label_frame(n=48):
    df = make_reviews(n)
    df["tags"] = ["positive;short" if i % 3 == 0 else "negative" if i % 3 == 1 else "positive" for i in range(n)]
    df["pos"], df["neg"], df["short"] = [df.tags.str.contains(t).astype(int) for t in ("positive", "negative", "short")]
    return df


# display
def test_show_batch_shows_decoded_text_and_label(tiny_objects, reviews, shown):
    tiny_dls(reviews, tiny_objects).show_batch(max_n=3)
    frame = shown[-1]
    assert list(frame.columns) == ["text", "target"] and len(frame) == 3
    assert set(frame.text) <= set(reviews.text) and set(frame.target) <= {"positive", "negative"}


def test_show_batch_truncates_at_trunc_at_words(tiny_objects, reviews, shown):
    tiny_dls(reviews, tiny_objects).show_batch(max_n=4, trunc_at=2)
    assert all(len(t.split(" ")) <= 2 for t in shown[-1].text)


def test_show_results_adds_predictions(learn, shown):
    learn.show_results(max_n=4)
    frame = shown[-1]
    assert list(frame.columns) == ["text", "target", "prediction"] and len(frame) == 4
    assert set(frame.prediction) <= {"positive", "negative"}


def test_multi_label_show_batch_and_results(tiny_bert_dir, shown):
    dls = HFTextDataLoaders.from_df(multi_label_frame(), tiny_bert_dir, label_col="tags", label_delim=";",
                                    valid_col="is_valid", bs=8)
    dls.show_batch(max_n=6)
    assert any("; " in t for t in shown[-1].target)
    hf_learner(dls).show_results(max_n=4)
    assert "prediction" in shown[-1].columns


def test_interpretation_tools_walk_dict_batches(learn, shown):
    interp = ClassificationInterpretation.from_learner(learn)
    matrix = interp.confusion_matrix()
    assert matrix.shape == (2, 2) and matrix.sum() == len(learn.dls.valid_ds)
    interp.plot_confusion_matrix()
    losses, idxs = interp.top_losses(3)
    assert len(idxs) == 3 and losses.tolist() == sorted(losses.tolist(), reverse=True)
    interp.plot_top_losses(3)
    frame = shown[-1]
    assert list(frame.columns) == ["text", "target", "predicted", "probability", "loss"]
    assert frame.loss.tolist() == pytest.approx(losses.tolist(), abs=1e-5)


# inference
def test_predict_returns_label_index_and_probabilities(learn):
    label, idx, probs = learn.predict(TEXTS[1])
    assert label == learn.dls.vocab[int(idx)] and int(idx) == int(probs.argmax())
    assert probs.shape == (2,) and float(probs.sum()) == pytest.approx(1.0)


def test_hf_predict_equals_the_pipeline(learn):
    reference = pipeline("text-classification", model=learn.model.hf_model,
                         tokenizer=learn.dls.train_ds.tls[0].tfms.fs[-1].hf_tokenizer)
    for top_k in (1, None):
        ours, theirs = learn.hf_predict(TEXTS, bs=2, top_k=top_k), reference(TEXTS, top_k=top_k)
        flat = lambda rs: [d for r in rs for d in (r if isinstance(r, list) else [r])]
        assert [d["label"] for d in flat(ours)] == [d["label"] for d in flat(theirs)]
        assert [d["score"] for d in flat(ours)] == pytest.approx([d["score"] for d in flat(theirs)], abs=1e-4)
    assert learn.hf_predict(TEXTS[0]) == pytest.approx(reference(TEXTS[0]))


def test_hf_predict_keeps_input_order_and_agrees_with_predict(learn):
    results = learn.hf_predict(TEXTS, bs=2, top_k=None)
    for text, ranked in zip(TEXTS, results):
        label, _, probs = learn.predict(text)
        assert ranked[0]["label"] == label
        scores = {d["label"]: d["score"] for d in ranked}
        assert [scores[v] for v in learn.dls.vocab] == pytest.approx(probs.tolist(), abs=1e-5)


# multi-label
@pytest.mark.parametrize("how", ["delimited", "one-hot columns"])
def test_multi_label_uses_bce_and_thresholded_predictions(tiny_bert_dir, how):
    df = multi_label_frame()
    label_col = dict(label_col="tags", label_delim=";") if how == "delimited" else dict(label_col=["pos", "neg", "short"])
    dls = HFTextDataLoaders.from_df(df, tiny_bert_dir, valid_col="is_valid", bs=8, **label_col)
    learn = hf_learner(dls)
    assert isinstance(learn.loss_func, BCEWithLogitsLossFlat)
    assert [m.name for m in learn.metrics] == ["accuracy_multi", "f1_score"]
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    labels, chosen, probs = learn.predict(TEXTS[0])
    assert chosen.tolist() == (probs > 0.5).tolist()
    assert list(labels) == [v for v, c in zip(dls.vocab, chosen) if c]
    assert learn.model.hf_model.config.problem_type == "multi_label_classification"
    reference = pipeline("text-classification", model=learn.model.hf_model,
                         tokenizer=dls.train_ds.tls[0].tfms.fs[-1].hf_tokenizer, top_k=None)(TEXTS)
    ours = learn.hf_predict(TEXTS, top_k=None)
    assert [[d["label"] for d in r] for r in ours] == [[d["label"] for d in r] for r in reference]
    assert [d["score"] for r in ours for d in r] == pytest.approx([d["score"] for r in reference for d in r], abs=1e-4)


# factory
def test_factory_pairs(tiny_bert_dir, shown):
    df = make_reviews(40)
    df["other"] = df.text.str.split(" ").str[:2].str.join(" ")
    dls = HFTextDataLoaders.from_df(df, tiny_bert_dir, text_col=["text", "other"], valid_col="is_valid", bs=8)
    x, _ = dls.one_batch()
    assert (x["token_type_ids"] == 1).any()
    dls.show_batch(max_n=2)
    assert list(shown[-1].columns) == ["text", "text_pair", "target"]
    learn = hf_learner(dls)
    assert learn.predict(["good movie", "the plot"])[0] in dls.vocab
    assert learn.hf_predict([("good movie", "the plot")])[0]["label"] in dls.vocab


def test_hf_predict_reads_a_two_tuple_by_what_the_learner_was_trained_on(learn, tiny_bert_dir):
    "Single-text learner: a 2-tuple of str is two texts. Pair learner: it is one pair (as is a text/text_pair dict)."
    two = learn.hf_predict(("good movie", "the plot was bad"))
    assert len(two) == 2 and two == learn.hf_predict(["good movie", "the plot was bad"])
    df = make_reviews(40)
    df["other"] = df.text.str[::-1]
    pairs = hf_learner(HFTextDataLoaders.from_df(df, tiny_bert_dir, text_col=["text", "other"], valid_col="is_valid",
                                                 bs=8))
    one = pairs.hf_predict(("good movie", "the plot was bad"))
    assert len(one) == 1 and one == pairs.hf_predict([("good movie", "the plot was bad")])
    assert pairs.hf_predict({"text": "good movie", "text_pair": "the plot was bad"}) == one


def test_factory_random_split_with_valid_pct_and_seed(tiny_bert_dir):
    df = make_reviews(50)
    a = HFTextDataLoaders.from_df(df, tiny_bert_dir, valid_pct=0.2, seed=3, bs=8)
    b = HFTextDataLoaders.from_df(df, tiny_bert_dir, valid_pct=0.2, seed=3, bs=8)
    assert len(a.valid_ds) == 10 and list(a.valid_ds.items.index) == list(b.valid_ds.items.index)


def test_default_metrics_fit_three_classes(tiny_bert_dir):
    dls = HFTextDataLoaders.from_df(make_reviews(60, n_classes=3), tiny_bert_dir, valid_col="is_valid", bs=8)
    learn = hf_learner(dls)
    assert learn.model.hf_model.config.num_labels == 3
    assert [m.name for m in learn.metrics] == ["accuracy", "f1_score"]
    assert learn.metrics[1].kwargs["average"] == "macro"  # binary F1 fails on three classes
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    assert len(learn.recorder.values[-1]) == 4  # train loss, valid loss, accuracy, F1: no crash on 3 classes
    assert learn.model.hf_model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}


def test_two_class_metrics_use_binary_f1(learn):
    assert isinstance(learn.loss_func, CrossEntropyLossFlat)
    assert [m.name for m in learn.metrics] == ["accuracy", "f1_score"]


# export
EXPORT_CHECK = textwrap.dedent("""
    import json, sys
    from fastai.text.all import load_learner
    learn = load_learner(sys.argv[1])
    texts = json.loads(sys.argv[2])
    out = {"predict": [[str(l), int(i), p.tolist()] for l, i, p in map(learn.predict, texts)],
           "hf_predict": learn.hf_predict(texts, top_k=None), "modules": sorted(m for m in sys.modules if m.startswith("blurlite"))}
    print(json.dumps(out))
""")


def test_export_then_load_learner_in_a_fresh_process(learn, tmp_path):
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, 1e-3)
    fname = tmp_path / "export.pkl"
    learn.export(fname)
    expected = {"predict": [[str(l), int(i), p.tolist()] for l, i, p in map(learn.predict, TEXTS)],
                "hf_predict": learn.hf_predict(TEXTS, top_k=None)}
    out = subprocess.run([sys.executable, "-c", EXPORT_CHECK, str(fname), json.dumps(TEXTS)],
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # labels exactly; probabilities to float rounding (BLAS may pick other kernels in another process)
    assert [p[:2] for p in got["predict"]] == [p[:2] for p in expected["predict"]]
    assert [p[2] for p in got["predict"]] == [pytest.approx(p[2], abs=1e-6) for p in expected["predict"]]
    assert [[d["label"] for d in r] for r in got["hf_predict"]] == [[d["label"] for d in r] for r in expected["hf_predict"]]
    assert [[d["score"] for d in r] for r in got["hf_predict"]] == [
        pytest.approx([d["score"] for d in r], abs=1e-6) for r in expected["hf_predict"]]


def test_export_holds_no_training_data(learn, tmp_path):
    fname = tmp_path / "export.pkl"
    texts = list(learn.dls.train_ds.items.text) + list(learn.dls.valid_ds.items.text)
    assert any(t in learn.dls.train_ds.tls[0].tfms.fs[-1]._cache for t in texts)  # cached while training
    learn.export(fname)
    data = fname.read_bytes()
    # single words live in the tokenizer's vocabulary; a whole text would come from the data or its token cache
    assert [t for t in texts if len(t.split()) >= 4 and t.encode() in data] == []
    loaded = load_learner(fname)
    assert len(loaded.dls.train_ds) == 0 and len(loaded.dls.valid_ds) == 0
