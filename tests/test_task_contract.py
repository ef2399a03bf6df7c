"""What every registered task does, tested for free: show_batch, predict, export -> load_learner, and a command line
round trip (train from a JSON Lines file, predict from the artifact). Each task brings an example (conftest)."""
import json
import sys

import pytest
from conftest import task_checkpoint, task_example
from fastai.callback.schedule import fit_one_cycle  # noqa: F401  (patches Learner)
from fastai.learner import load_learner
from fastai.torch_core import set_seed

import blurlite.cli as cli
from blurlite.all import hf_learner, load_pretrained_learner, registered_tasks, task_for

TASKS = registered_tasks()


@pytest.fixture(scope="module", params=TASKS, ids=[t.name for t in TASKS])
def trained(request):
    "A learner of each registered task, built by the task's own `from_df` on its example and trained one epoch."
    task = request.param
    dls = task.from_df(task_example(task)["frame"](64), task_checkpoint(request, task), valid_col="is_valid", bs=8, max_length=24,
                       seed=0)
    set_seed(0)
    learn = hf_learner(dls)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(1, 1e-3)
    return task, learn


@pytest.fixture
def displayed(monkeypatch):
    "The frames the task modules' show methods display, captured."
    frames = []
    for name, module in list(sys.modules.items()):
        if name.startswith("blurlite.tasks.") and hasattr(module, "display_df"):
            monkeypatch.setattr(module, "display_df", frames.append)
    return frames


def test_the_task_resolves_from_its_dataloaders(trained):
    task, learn = trained
    assert task_for(learn.dls) is task


def test_show_batch_and_show_results_display_max_n_rows(trained, displayed):
    task, learn = trained
    learn.dls.show_batch(max_n=3)
    learn.show_results(max_n=2)
    assert [len(f) for f in displayed] == [3, 2]
    assert all(isinstance(v, str) and v for v in displayed[0].iloc[:, 0])  # decoded, readable text first


def test_predict_json_answers_once_per_text_and_json_serializable(trained):
    task, learn = trained
    texts = task_example(task)["texts"]
    results = task.predict_json(learn, texts)
    assert len(results) == len(texts)
    json.dumps(results)


def test_export_and_load_learner_give_the_same_answers(trained, tmp_path):
    task, learn = trained
    texts = task_example(task)["texts"]
    learn.export(tmp_path / "export.pkl")
    loaded = load_learner(tmp_path / "export.pkl")
    assert task_for(loaded.dls) is task
    assert json.dumps(task.predict_json(loaded, texts)) == json.dumps(task.predict_json(learn, texts))


def test_the_command_line_trains_and_predicts_every_task(trained, request, tmp_path, capsys):
    task, _ = trained
    example = task_example(task)
    data = tmp_path / "train.jsonl"
    example["frame"](64).to_json(data, orient="records", lines=True)
    out = tmp_path / "model"
    code = cli.main(["train", "--task", task.name, "--data", str(data), "--model", str(task_checkpoint(request, task)),
                     "--valid-col", "is_valid", "--epochs", "1", "--bs", "8", "--max-length", "24", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "blurlite.json").read_text())["task"] == task.name
    capsys.readouterr()
    assert cli.main(["predict", str(out), *example.get("predict_argv", example["texts"])]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = task.predict_json(load_pretrained_learner(out), example["texts"])
    assert json.dumps(printed) == json.dumps(json.loads(json.dumps(expected)))
