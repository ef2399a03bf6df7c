"""The README's commands and quickstart, and the public API surface of blurlite.all."""
import re
import shutil
from pathlib import Path

import fastai.text.all as fastai_all
import pytest

import blurlite.all

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    test_command = next(b.strip() for b in bash_blocks if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_first_command_installs_and_runs_the_demo():
    bash_blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert bash_blocks[0].strip() == 'pip install -e ".[demo]" && blurlite demo'
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    assert cfg["DEFAULT"]["console_scripts"] == "blurlite=blurlite.cli:main"


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # what the NER, MLM, causal-LM and sequence-to-sequence examples read
    for name in ("wnut17_train.conll", "tinyshakespeare.txt", "squad_v1_super_bowl_50.json"):
        shutil.copy(ROOT.parent / "shared" / "data" / name, tmp_path)
    namespace = {}
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        if "register_task(" in block:  # "Adding a task": run in a process of its own (below)
            continue
        exec(compile(block, "README.md", "exec"), namespace)
        if "read_conll" in block:  # the NER example
            assert len(namespace["learn"].predict(["Flying", "to", "New", "York"])[0]) == 4
    assert (tmp_path / "classifier.pkl").exists()
    assert [r["token_str"] for r in namespace["learn"].fill_mask("the [MASK] of it", top_k=3)]  # MLM example ran
    assert (tmp_path / "mlm-model" / "model.safetensors").exists()
    generated = namespace["clm_learn"].generate("ROMEO:", max_new_tokens=5)  # the causal-LM example ran
    assert generated[0]["generated_text"].startswith("ROMEO:")
    s2s_learn = namespace["s2s_learn"]  # the sequence-to-sequence example ran and scored generated text
    assert [m.name for m in s2s_learn.metrics] == ["perplexity", "rougeL"]
    assert s2s_learn.recorder.values[-1][-1] is not None


def test_readme_adding_a_task_runs_a_task_defined_outside_the_package(tmp_path):
    "The README's task of its own (in a fresh process, as a user's script): registered, trained, resolved."
    import subprocess
    import sys

    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "register_task(" in b)
    script = tmp_path / "my_task.py"
    script.write_text(block + "\nprint('RESULT', learn.predict(tuple(dls.valid_ds.items.iloc[0][['first', 'second']]))[0],"
                      " get_task('next-sentence').predict_json(learn, [('a', 'b')]))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    result = next(line for line in lines if line.startswith("next-sentence "))
    valid_loss, accuracy = (float(v) for v in re.findall(r"[\d.]+", result.split("[", 1)[1]))
    assert 0 <= accuracy <= 1 and valid_loss > 0
    assert any(line.startswith("RESULT") and ("next" in line or "random" in line) for line in lines)


def test_blurlite_all_shadows_no_fastai_name():
    fastai_names = set(dir(fastai_all))
    for name in blurlite.all.__all__:
        if name in fastai_names:
            assert getattr(fastai_all, name) is getattr(blurlite.all, name), f"{name} shadows fastai's {name}"


def test_api_names_are_exported():
    for name in ("get_hf_objects", "HFTextBlock", "HFTextDataLoaders", "hf_learner", "HFModelWrapper",
                 "HFModelCallback", "hf_splitter"):
        assert name in blurlite.all.__all__ and hasattr(blurlite.all, name)


def test_version_comes_from_settings_ini():
    import configparser

    import blurlite

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "settings.ini")
    assert blurlite.__version__ == cfg["DEFAULT"]["version"]
