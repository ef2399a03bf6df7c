"""Pickle-free artifacts (`save_pretrained` / `load_pretrained_learner`) for every registered task, pipeline
interop, version records and damaged artifacts."""
import json
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import make_reviews, ner_frame, task_checkpoint, task_example
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.learner import load_learner
from fastai.torch_core import set_seed
from transformers import pipeline

import blurlite.learner
from fastai.data.block import RegressionBlock

from blurlite.all import (HFMLMDataLoaders, HFTextDataLoaders, HFTokenClassDataLoaders, IncompatibleArtifactError,
                          get_task, hf_learner, load_pretrained_learner, registered_tasks, task_for)
from blurlite.serialization import SETTINGS_FILE

TEXTS = ["good movie and great actor", "the plot was boring and bad", "a film"]


def build(kind, path):
    "A trained learner of a registered task (through the task's own `from_df`, on its example), or of a variant."
    reviews = make_reviews(80)
    if kind in {t.name for t in registered_tasks()}:
        task = get_task(kind)
        dls = task.from_df(task_example(task)["frame"](80), path, valid_col="is_valid", bs=8, max_length=24, seed=0)
    elif kind == "pairs":
        reviews["other"] = reviews.text.str.upper().str.lower().str[::-1].str.split().str.join(" ")
        dls = HFTextDataLoaders.from_df(reviews, path, text_col=["text", "other"], valid_col="is_valid", bs=8)
    elif kind == "multi-label":
        reviews["tags"] = reviews.label + ";" + reviews.text.str.contains("plot").map({True: "plot", False: "none"})
        dls = HFTextDataLoaders.from_df(reviews, path, label_col="tags", label_delim=";", valid_col="is_valid", bs=8)
    elif kind == "regression-pairs":
        reviews["other"] = reviews.text.str[::-1]
        reviews["a"], reviews["b"] = (reviews.label == "positive").astype(float), reviews.text.str.len() / 10.0
        dls = HFTextDataLoaders.from_df(reviews, path, text_col=["text", "other"], label_col=["a", "b"],
                                        y_block=RegressionBlock(), valid_col="is_valid", bs=8)
    elif kind == "token-classification-all":
        dls = HFTokenClassDataLoaders.from_df(ner_frame(reviews), path, valid_col="is_valid", bs=8, labeling="all")
    else:  # "fill-mask-whole-word"
        dls = HFMLMDataLoaders.from_df(reviews, path, valid_col="is_valid", bs=8, whole_word=True, max_length=20)
    set_seed(0)
    learn = hf_learner(dls)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3)
    return learn


def outputs(learn) -> dict:
    "What a user asks of the learner: the pipeline-style answer, and fastai's predict (masked LM has none)."
    task = task_for(learn.dls)
    texts = task_example(task)["texts"]
    out = {"json": task.predict_json(learn, texts)}
    if task.name != "fill-mask":
        with learn.no_bar():
            out["predict"] = [learn.predict(t)[0] for t in texts]
    return out


def same(a, b, tol=1e-4):
    "Equal structures; floats (scores) within `tol`."
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= tol
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    return a == b or str(a) == str(b)


VARIANTS = {"pairs": "text-classification", "multi-label": "text-classification",
            "regression-pairs": "text-regression", "token-classification-all": "token-classification",
            "fill-mask-whole-word": "fill-mask"}
KINDS = [t.name for t in registered_tasks()] + list(VARIANTS)


def task_of(kind):
    return get_task(VARIANTS.get(kind, kind))


@pytest.fixture(scope="module", params=KINDS)
def saved(request, tmp_path_factory):
    learn = build(request.param, task_checkpoint(request, task_of(request.param)))
    path = learn.save_pretrained(tmp_path_factory.mktemp(request.param) / "artifact")
    return request.param, learn, path


def test_every_registered_task_has_an_example():
    for task in registered_tasks():
        assert task_example(task)["texts"]


def test_the_artifact_is_safetensors_tokenizer_config_and_json(saved):
    kind, learn, path = saved
    names = {p.name for p in path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer_config.json", SETTINGS_FILE} <= names
    assert not any(n.endswith((".bin", ".pkl", ".pt", ".pth")) for n in names)
    settings = json.loads((path / SETTINGS_FILE).read_text())
    assert settings["task"] == task_of(kind).name and set(settings["versions"]) >= {"blurlite", "fastai",
                                                                                     "transformers", "torch"}
    config = json.loads((path / "config.json").read_text())
    if task_of(kind).name in ("text-classification", "token-classification"):
        assert list(config["id2label"].values()) == [str(v) for v in learn.dls.vocab]
    if task_of(kind).name == "text-regression":
        assert config["problem_type"] == "regression" and len(config["id2label"]) == learn.dls.c


def test_every_artifact_file_has_the_same_permissions(saved):
    "The weights read like their neighbours (transformers writes them 0600 through a temporary file)."
    _, _, path = saved
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in path.iterdir() if p.is_file()}
    assert len(set(modes.values())) == 1, modes


def test_load_pretrained_learner_unpickles_nothing_and_predicts_the_same(saved, monkeypatch):
    kind, learn, path = saved
    expected = outputs(learn)

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    loaded = load_pretrained_learner(path)
    assert same(outputs(loaded), expected)


@pytest.mark.parametrize("saved", [k for k in KINDS if task_of(k).pipeline], indirect=True)
def test_transformers_pipeline_loads_the_artifact_and_agrees(saved):
    "Tasks whose pipeline transformers 5 has (question answering's: see test_question_answering, against 4.57.6's)."
    kind, learn, path = saved
    task = task_of(kind)
    example = task_example(task)
    pipe = pipeline(task.pipeline, model=str(path), **task.pipeline_kwargs)  # as blurlite.json and the README say
    got = [pipe(t, **example["pipeline_kwargs"]) for t in example["texts"]]
    if task.pipeline == "text-classification":  # one text: a one-element list
        got = [g[0] for g in got]
    assert same(got, task.predict_json(learn, example["texts"]))


def test_save_pretrained_then_export_of_the_loaded_learner_round_trips(saved, tmp_path):
    kind, learn, path = saved
    loaded = load_pretrained_learner(path)
    loaded.export(tmp_path / "again.pkl")
    assert same(outputs(load_learner(tmp_path / "again.pkl")), outputs(learn))


# damaged or incompatible artifacts
@pytest.fixture
def artifact(tiny_bert_dir, tmp_path):
    learn = build("text-classification", tiny_bert_dir)
    return learn.save_pretrained(tmp_path / "artifact")


def test_damaged_artifacts_get_clear_errors(artifact, tmp_path):
    with pytest.raises(FileNotFoundError, match="no directory at"):
        load_pretrained_learner(tmp_path / "nowhere")
    weights = artifact / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors is truncated or corrupted"):
        load_pretrained_learner(artifact)
    weights.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_pretrained_learner(artifact)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="is missing model.safetensors"):
        load_pretrained_learner(artifact)
    (artifact / SETTINGS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="blurlite.json is corrupted"):
        load_pretrained_learner(artifact)
    (artifact / SETTINGS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="has no blurlite.json"):
        load_pretrained_learner(artifact)


@pytest.mark.parametrize("change, message", [
    ({"format": 99}, "artifact format 99"),
    ({"versions": {"transformers": "6.0.0"}}, "written with transformers 6.0.0"),
    ({"versions": {"blurlite": "9.1.0"}}, "written with blurlite 9.1.0"),
])
def test_artifacts_from_incompatible_versions_are_refused(artifact, change, message):
    settings_file = artifact / SETTINGS_FILE
    settings = json.loads(settings_file.read_text())
    settings_file.write_text(json.dumps({**settings, **change}))
    with pytest.raises(IncompatibleArtifactError, match=message):
        load_pretrained_learner(artifact)


def test_exports_record_versions_and_refuse_incompatible_ones(tiny_bert_dir, tmp_path, monkeypatch):
    learn = build("text-classification", tiny_bert_dir)
    learn.export(tmp_path / "ok.pkl")
    assert load_learner(tmp_path / "ok.pkl").cbs[-1] is not None
    monkeypatch.setattr(blurlite.learner, "stack_versions",
                        lambda: {"blurlite": "0.1.0", "fastai": "2.7.19", "transformers": "5.0.0", "torch": "2.6.0"})
    learn.export(tmp_path / "old.pkl")
    monkeypatch.undo()
    with pytest.raises(IncompatibleArtifactError, match="written with fastai 2.7.19"):
        load_learner(tmp_path / "old.pkl")


LOAD_CHECK = textwrap.dedent("""
    import json, sys
    from blurlite.all import load_pretrained_learner, get_task
    learn = load_pretrained_learner(sys.argv[1])
    print(json.dumps(get_task("classification").predict_json(learn, json.loads(sys.argv[2]))))
""")


def test_a_fresh_process_loads_the_artifact(artifact, tmp_path):
    learn_out = load_pretrained_learner(artifact).hf_predict(TEXTS)
    out = subprocess.run([sys.executable, "-c", LOAD_CHECK, str(artifact), json.dumps(TEXTS)], capture_output=True,
                         text=True, check=True, cwd=tmp_path)
    assert same(json.loads(out.stdout.strip().splitlines()[-1]), learn_out, tol=1e-6)
