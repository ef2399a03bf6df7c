"""The `blurlite` command: train, predict, demo; one-line errors for bad arguments and files."""
import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from conftest import make_reviews
from transformers import pipeline

import blurlite.cli as cli
from blurlite.all import load_pretrained_learner


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, pattern: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("blurlite")]
    assert len(lines) == 1 and pattern in lines[0], err
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def trained_dir(reviews_csv, tiny_bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    assert cli.main(["train", "--data", str(reviews_csv), "--model", str(tiny_bert_dir), "--valid-col", "is_valid",
                     "--epochs", "1", "--bs", "8", "--lr", "1e-3", "--max-length", "32", "--out", str(out)]) == 0
    return out


def test_train_prints_a_validation_report_and_saves_an_artifact(reviews_csv, tiny_bert_dir, tmp_path, capsys):
    code, out, err = run(capsys, "train", "--data", reviews_csv, "--model", tiny_bert_dir, "--valid-pct", 0.25,
                         "--epochs", 1, "--bs", 8, "--out", tmp_path / "m")
    assert code == 0, err
    assert "validation: valid_loss" in out and "accuracy" in out and "saved to" in out
    assert (tmp_path / "m" / "blurlite.json").exists()


def test_predict_prints_one_json_per_text_as_the_pipeline_does(trained_dir, tmp_path, capsys):
    texts = ["good movie", "the plot was bad", "a film"]
    (tmp_path / "more.txt").write_text("boring actor\n\nnice film\n")
    code, out, err = run(capsys, "predict", trained_dir, *texts, "--file", tmp_path / "more.txt")
    assert code == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    expected = pipeline("text-classification", model=str(trained_dir))(texts + ["boring actor", "nice film"])
    assert [r["label"] for r in results] == [e["label"] for e in expected]
    assert [r["score"] for r in results] == pytest.approx([e["score"] for e in expected], abs=1e-4)


def test_module_form_runs_like_the_console_script(trained_dir):
    for command in ([sys.executable, "-m", "blurlite"], [shutil.which("blurlite")]):
        assert command[0], "the blurlite console script is not installed (pip install -e .)"
        done = subprocess.run(command + ["predict", str(trained_dir), "good movie"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert set(json.loads(done.stdout.strip().splitlines()[-1])) == {"label", "score"}


def test_train_token_classification_from_conll_and_masked_lm_from_text(tiny_bert_dir, tmp_path, capsys):
    from conftest import NEGATIVE, POSITIVE

    sentences = [t.split() for t in make_reviews(60).text]
    conll = "\n\n".join("\n".join(f"{w}\t{'B-POS' if w in POSITIVE else 'B-NEG' if w in NEGATIVE else 'O'}"
                                  for w in words) for words in sentences)
    (tmp_path / "train.conll").write_text(conll + "\n")
    code, out, err = run(capsys, "train", "--task", "token-classification", "--data", tmp_path / "train.conll",
                         "--model", tiny_bert_dir, "--epochs", 1, "--bs", 8, "--out", tmp_path / "ner")
    assert code == 0, err
    assert "entity_f1" in out
    code, out, err = run(capsys, "predict", tmp_path / "ner", "good movie and bad plot")
    assert code == 0 and isinstance(json.loads(out.splitlines()[0]), list)
    (tmp_path / "corpus.txt").write_text("\n".join(make_reviews(200).text))
    code, out, err = run(capsys, "train", "--task", "masked-lm", "--data", tmp_path / "corpus.txt", "--model",
                         tiny_bert_dir, "--max-length", 16, "--epochs", 1, "--bs", 8, "--out", tmp_path / "mlm")
    assert code == 0, err
    assert "perplexity" in out
    code, out, err = run(capsys, "predict", tmp_path / "mlm", "the [MASK] was good")
    assert code == 0 and len(json.loads(out.splitlines()[0])) == 5


@pytest.mark.parametrize("argv, code, message", [
    (["train", "--task", "image-classification", "--data", "{csv}"], 1, "unknown task 'image-classification'"),
    (["train", "--data", "nowhere.csv", "--model", "{model}"], 1, "no data file at 'nowhere.csv'"),
    (["train", "--data", "{csv}", "--model", "{model}", "--text-col", "review"], 1,
     "--text-col 'review': no such column in"),
    (["train", "--task", "ner", "--data", "{csv}", "--model", "{model}"], 1,
     "--text-col 'words' (the default of token-classification): no such column"),
    (["train", "--data", "{csv}", "--model", "{model}", "--bs", "0"], 2, "--bs must be at least 1"),
    (["train", "--data", "{csv}", "--model", "{model}", "--bs", "500"], 1, "bs=500 is larger than the training set"),
    (["train", "--data", "{bad}", "--model", "{model}"], 1, "unknown file type '.xml'"),
    (["train", "--epochs", "two"], 2, "argument --epochs: invalid int value: 'two'"),
    (["train", "--data", "{csv}", "--model", "{model}", "--num-processes", "0"], 2,
     "--num-processes must be at least 1"),
    (["predict", "nowhere", "a text"], 1, "no directory at 'nowhere'"),
    (["predict", "{model}", "a text"], 1, "has no blurlite.json"),
    (["fly"], 2, "invalid choice: 'fly'"),
])
def test_bad_arguments_and_files_give_one_line_errors(argv, code, message, reviews_csv, tiny_bert_dir, tmp_path,
                                                      capsys):
    (tmp_path / "data.xml").write_text("<a/>")
    argv = [a.format(csv=reviews_csv, model=tiny_bert_dir, bad=tmp_path / "data.xml") for a in argv]
    try:
        got = cli.main(argv)
    except SystemExit as e:  # argparse exits for usage errors
        got = e.code
    _, err = capsys.readouterr()
    assert got == code
    one_line_error(err, message)


FAST_CHECK = """
import sys
from blurlite.cli import main
code = main(sys.argv[1:])
print("HEAVY", sorted(m for m in ("torch", "fastai", "transformers", "pandas") if m in sys.modules))
"""


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "nowhere.csv", "--model", "m"], "no data file at 'nowhere.csv'"),
    (["train", "--task", "image-classification", "--data", "{csv}", "--model", "m"], "unknown task 'image-classification'"),
    (["train", "--data", "{csv}", "--model", "m", "--label-col", "stars"], "--label-col 'stars': no such column"),
    (["predict", "nowhere", "a text"], "no directory at 'nowhere'"),
])
def test_argument_and_file_errors_come_before_the_heavy_imports(argv, message, reviews_csv, tmp_path):
    "Reported before torch, fastai, transformers or pandas is imported: at once, not after seconds of imports."
    argv = [a.format(csv=reviews_csv) for a in argv]
    done = subprocess.run([sys.executable, "-c", FAST_CHECK, *argv], capture_output=True, text=True, cwd=tmp_path)
    one_line_error(done.stderr, message)
    assert "HEAVY []" in done.stdout


def test_train_help_lists_the_registered_tasks_and_the_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for task in ("text-classification", "token-classification", "fill-mask", "text-regression", ".conll", ".txt"):
        assert task in out
    assert "(default: 16)" in out and "(default: 0.0001)" in out


def test_the_command_line_prints_no_dependency_future_warnings(trained_dir):
    done = subprocess.run([sys.executable, "-m", "blurlite", "predict", str(trained_dir), "good movie"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "default"})
    assert done.returncode == 0 and "FutureWarning" not in done.stderr, done.stderr


def test_demo_runs_the_whole_job_and_writes_report_plots_and_artifact(tiny_bert_dir, tmp_path, capsys):
    code, out, err = run(capsys, "demo", "--model", tiny_bert_dir, "--epochs", 2, "--out", tmp_path / "demo")
    assert code == 0, err
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["pipeline_agrees"] is True and report["train"] == 320 and report["valid"] == 80
    assert set(report["validation"]) == {"valid_loss", "accuracy", "f1_score"}
    for name in ("loss.png", "confusion_matrix.png"):
        assert (tmp_path / "demo" / name).read_bytes()[:4] == b"\x89PNG"
    assert report["loss_curve_points"] == {"train": 40, "valid": 2}  # 320/16 steps a epoch: both curves recorded
    import matplotlib.image

    pixels = matplotlib.image.imread(tmp_path / "demo" / "loss.png")[..., :3]
    for color in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):  # matplotlib's C0 (train) and C1 (valid) curves
        close = (abs(pixels - [c / 255 for c in color]).max(-1) < 0.08).sum()
        assert close > 20, f"no curve of color {color} in loss.png"
    assert len(load_pretrained_learner(tmp_path / "demo" / "model").hf_predict(["a match in the rain"])) == 1
    assert "validation:" in out and "agrees" in out
    assert f"done in {report['seconds']:.0f} s" in out  # the time printed is the time reported


def test_train_without_data_or_model_runs_the_demo(tiny_bert_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_default_model", lambda: str(tiny_bert_dir))
    code, out, err = run(capsys, "train", "--epochs", 1, "--out", tmp_path / "d")
    assert code == 0, err
    assert (tmp_path / "d" / "report.json").exists() and "blurlite demo" in out


def test_the_demo_data_is_a_labelled_set_that_ships_with_the_package():
    from blurlite.demo import demo_data

    df = demo_data()
    assert len(df) == 400 and df.label.value_counts().tolist() == [100] * 4 and df.is_valid.sum() == 80
    assert df.text.is_unique and not df.text.isna().any()
    assert isinstance(df, pd.DataFrame)
