"""Text regression, the fourth built-in task: float targets, MSE, metrics, display, pipeline fidelity, bad input."""
import json

import numpy as np
import pytest
from conftest import make_reviews, regression_frame
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.interpret import Interpretation
from fastai.losses import MSELossFlat
from fastai.data.block import RegressionBlock
from fastai.torch_core import set_seed
from transformers import pipeline

import blurlite.cli as cli
from blurlite.all import HFTextDataLoaders, hf_learner, load_pretrained_learner, task_for

TEXTS = ["good movie and great actor", "the plot was boring and bad", "a film"]


def regression_dls(path, df=None, **kwargs):
    df = regression_frame(make_reviews(80)) if df is None else df
    return HFTextDataLoaders.from_df(df, path, label_col=kwargs.pop("label_col", "label"), y_block=RegressionBlock(),
                                     valid_col="is_valid", bs=8, **kwargs)


@pytest.fixture(scope="module")
def trained(tiny_bert_dir):
    "A tiny regressor trained until it has learnt the sentiment score."
    set_seed(0)
    learn = hf_learner(regression_dls(tiny_bert_dir, regression_frame(make_reviews(160))))
    with learn.no_bar(), learn.no_logging():
        before = learn.validate()
        learn.fit_one_cycle(6, 3e-3)
    return learn, before


def test_regression_block_picks_the_regression_task_mse_and_a_regression_head(tiny_bert_dir):
    dls = regression_dls(tiny_bert_dir)
    learn = hf_learner(dls)
    assert task_for(dls).name == "text-regression"
    assert repr(learn.loss_func) == repr(MSELossFlat())
    assert [m.name for m in learn.metrics] == ["mse", "mae", "pearsonr"]
    config = learn.model.hf_model.config
    assert config.problem_type == "regression" and config.num_labels == 1 and config.id2label == {0: "label"}


def test_training_learns_the_score(trained):
    learn, before = trained
    after = learn.validate()
    names = ["valid_loss"] + [m.name for m in learn.metrics]
    before, after = dict(zip(names, before)), dict(zip(names, after))
    variance = float(np.var(learn.dls.valid_ds.items.label))
    assert after["mse"] < 0.5 * variance < before["mse"]
    assert after["pearsonr"] > 0.7
    assert after["mse"] == pytest.approx(after["valid_loss"], rel=1e-5)


def test_several_target_columns_give_one_output_each(tiny_bert_dir):
    df = regression_frame(make_reviews(40))
    df["length"] = df.text.str.len().astype(float)
    learn = hf_learner(regression_dls(tiny_bert_dir, df, label_col=["label", "length"]))
    assert learn.model.hf_model.config.id2label == {0: "label", 1: "length"}
    values, _, raw = learn.predict(TEXTS[0])
    assert len(values) == 2 and raw.shape == (2,)
    ranked = learn.hf_predict(TEXTS[0], top_k=None)
    assert sorted(d["label"] for d in ranked) == ["label", "length"]


def test_show_batch_results_and_top_losses_show_values(trained, shown):
    learn, _ = trained
    learn.dls.show_batch(max_n=3)
    assert list(shown[-1].columns) == ["text", "target"] and all(float(v) >= 0 for v in shown[-1].target)
    learn.show_results(max_n=3)
    assert list(shown[-1].columns) == ["text", "target", "prediction"]
    float(shown[-1].prediction.iloc[0])
    interp = Interpretation.from_learner(learn)
    losses, _ = interp.top_losses(3)
    interp.plot_top_losses(3)
    assert list(shown[-1].columns) == ["text", "target", "predicted", "loss"]  # no "probability" for values
    assert shown[-1].loss.tolist() == pytest.approx(losses.tolist(), abs=1e-5)


def test_predict_and_hf_predict_give_the_model_output(trained):
    learn, _ = trained
    results = learn.hf_predict(TEXTS)
    for text, result in zip(TEXTS, results):
        values, _, raw = learn.predict(text)
        assert result["label"] == "label" and result["score"] == pytest.approx(float(raw[0]), abs=1e-5)
        assert values[0] == pytest.approx(float(raw[0]), abs=1e-6)
    assert results[0]["score"] > results[1]["score"]  # positive above negative: it learnt the sentiment


def test_the_artifact_is_a_regression_model_the_pipeline_agrees_with(trained, tmp_path):
    learn, _ = trained
    path = learn.save_pretrained(tmp_path / "model")
    assert json.loads((path / "config.json").read_text())["problem_type"] == "regression"
    pipe = pipeline("text-classification", model=str(path), function_to_apply="none")
    for top_k in (1, None):
        ours, theirs = learn.hf_predict(TEXTS, top_k=top_k), pipe(TEXTS, top_k=top_k)
        flat = lambda rs: [d for r in rs for d in (r if isinstance(r, list) else [r])]  # noqa: E731
        assert [d["label"] for d in flat(ours)] == [d["label"] for d in flat(theirs)]
        assert [d["score"] for d in flat(ours)] == pytest.approx([d["score"] for d in flat(theirs)], abs=1e-4)
    loaded = load_pretrained_learner(path)
    assert [r["score"] for r in loaded.hf_predict(TEXTS)] == pytest.approx([r["score"] for r in
                                                                            learn.hf_predict(TEXTS)], abs=1e-5)


@pytest.mark.parametrize("value, error, message", [
    (np.nan, ValueError, r"row 7, column 'label': the target is missing"),
    ("high", TypeError, r"row 7, column 'label': regression targets must be numbers, got str 'high'"),
    (True, TypeError, r"row 7, column 'label': regression targets must be numbers, got bool"),
])
def test_missing_or_non_numeric_targets_name_the_row(tiny_bert_dir, value, error, message):
    df = regression_frame(make_reviews(20)).astype({"label": object})
    df.loc[7, "label"] = value
    with pytest.raises(error, match=message):
        regression_dls(tiny_bert_dir, df)


def test_a_block_size_that_does_not_fit_the_columns_is_refused(tiny_bert_dir):
    with pytest.raises(ValueError, match=r"RegressionBlock\(n_out=2\) but label_col names 1 column"):
        HFTextDataLoaders.from_df(regression_frame(make_reviews(20)), tiny_bert_dir, y_block=RegressionBlock(2))


def test_blurlite_train_task_regression(tiny_bert_dir, tmp_path, capsys):
    data = tmp_path / "scores.csv"
    regression_frame(make_reviews(64)).rename(columns={"label": "score"}).to_csv(data, index=False)
    out = tmp_path / "model"
    code = cli.main(["train", "--task", "regression", "--data", str(data), "--label-col", "score", "--model",
                     str(tiny_bert_dir), "--valid-col", "is_valid", "--epochs", "1", "--bs", "8", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and "mse" in printed and "pearsonr" in printed
    assert cli.main(["predict", str(out), *TEXTS]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["label"] for r in results] == ["score"] * 3
    assert [r["score"] for r in results] == pytest.approx([r["score"] for r in
                                                           load_pretrained_learner(out).hf_predict(TEXTS)], abs=1e-6)
