"""The task registry and the plug-in contract: checked registration, resolution, a core that names no task, no import
circle, and fastai's classes left as they are."""
import ast
import dataclasses
import re
import sys
from pathlib import Path

import pytest

import blurlite.cli as cli_module
from conftest import changed_attributes, fastai_class_attributes, make_reviews, task_example, tiny_dls, task_checkpoint
from fastai.data.block import DataBlock, RegressionBlock, TransformBlock
from fastai.data.transforms import ColReader, ColSplitter

import blurlite
import blurlite.tasks as tasks_module
from blurlite.all import HFTask, HFTextBlock, HFTextInput, get_task, hf_learner, register_task, registered_tasks, task_for

PACKAGE = Path(blurlite.__file__).parent
CORE = ["adapters.py", "checks.py", "cli.py", "data.py", "distributed.py", "fastai_compat.py", "hf_objects.py", "learner.py",
        "loading.py", "losses.py", "mixed_precision.py", "ranks.py", "serialization.py", "versions.py",
        "tasks/__init__.py"]


class OtherInput(HFTextInput):
    "A test task's own input type."


def a_task(**changes) -> HFTask:
    "A complete task (borrowing classification's callables), with `changes`."
    base = get_task("text-classification")
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(HFTask)}
    return HFTask(**{**fields, "name": "test-task", "input_type": OtherInput, "aliases": (), "accepts": None,
                     **changes})


@pytest.fixture
def registry(monkeypatch):
    "The registry, restored after the test."
    monkeypatch.setattr(tasks_module, "_TASKS", dict(tasks_module._TASKS))
    return tasks_module


def test_the_built_in_tasks_are_registered():
    assert [t.name for t in registered_tasks()] == ["text-classification", "token-classification", "fill-mask",
                                                    "text-regression", "question-answering", "causal-lm",
                                                    "seq2seq"]
    assert get_task("regression") is get_task("text-regression") and get_task("ner").name == "token-classification"
    assert get_task("qa").name == "question-answering" and get_task("clm").name == "causal-lm"
    assert get_task("summarization") is get_task("translation") is get_task("seq2seq")


@pytest.mark.parametrize("field, value, message", [
    ("from_df", None, "from_df is missing"),
    ("predict_json", "json", "predict_json must be callable"),
    ("input_type", dict, "input_type must be a subclass of HFTextInput"),
    ("auto_model", object, "auto_model must be an AutoModelFor"),
    ("pad_values", {"word_ids": "-1"}, "pad_values must map batch keys"),
    ("readers", {"txt": print}, "readers must map file suffixes"),
    ("non_model_keys", [1], "non_model_keys must be a frozenset of str"),
])
def test_register_task_names_the_missing_or_wrong_piece(registry, field, value, message):
    with pytest.raises(TypeError, match=f"task 'test-task' does not fit the HFTask contract: .*{message}"):
        register_task(a_task(**{field: value}))
    assert "test-task" not in {t.name for t in registered_tasks()}


def test_register_task_refuses_a_taken_name_or_alias(registry):
    with pytest.raises(ValueError, match="'text-classification' is already taken"):
        register_task(a_task(name="text-classification"))
    with pytest.raises(ValueError, match="'ner' is already taken by task 'token-classification'"):
        register_task(a_task(aliases=("ner",)))


def test_a_task_sharing_an_input_type_must_say_which_dataloaders_are_its_own(registry):
    with pytest.raises(ValueError, match="takes HFTextInput inputs, as task 'text-classification' does"):
        register_task(a_task(input_type=HFTextInput))
    register_task(a_task(input_type=HFTextInput, accepts=lambda dls: False))  # with `accepts`: fine


def test_the_built_in_task_manifest_matches_the_registered_tasks():
    "The names the command line checks before importing anything are those the task modules register."
    names = {n: (t.name, t.columns) for t in registered_tasks() for n in (t.name, *t.aliases)}
    assert tasks_module.builtin_task_names() == names


def test_plain_collections_are_frozen_on_the_task():
    task = a_task(non_model_keys={"a"}, pad_values={"a": -1}, aliases=["x"])
    assert task.non_model_keys == frozenset({"a"}) and task.aliases == ("x",)
    with pytest.raises(TypeError):
        task.pad_values["b"] = 0


def test_task_for_picks_the_task_that_accepts_the_targets(tiny_objects):
    df = make_reviews(40)
    df["score"] = df.text.str.len().astype(float)
    assert task_for(tiny_dls(df, tiny_objects)).name == "text-classification"
    regression = DataBlock(blocks=(HFTextBlock(*tiny_objects), RegressionBlock()), get_x=ColReader("text"),
                           get_y=ColReader("score"), splitter=ColSplitter("is_valid")).dataloaders(df, bs=8)
    assert task_for(regression).name == "text-regression"
    unknown = DataBlock(blocks=(HFTextBlock(*tiny_objects), TransformBlock()), get_x=ColReader("text"),
                        get_y=ColReader("score"), splitter=ColSplitter("is_valid")).dataloaders(df, bs=8)
    with pytest.raises(ValueError, match=r"none of the tasks for HFTextInput inputs .* accept these DataLoaders"):
        task_for(unknown)


def _core_source(name: str) -> str:
    "A core module's code without docstrings and comments."
    tree = ast.parse((PACKAGE / name).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value,
                                                                                           ast.Constant):
            body[0] = ast.Pass()
    return ast.unparse(tree)


@pytest.mark.parametrize("module", CORE)
def test_the_core_names_no_task(module):
    "No task's name, keys, file formats or classes in core code (the command line's default task excepted)."
    words = set()
    for task in registered_tasks():  # a task may read one of the core's own formats its way (SQuAD .json)
        words |= {task.name, *task.aliases, *task.non_model_keys, *task.pad_values,
                  *(set(task.readers) - set(cli_module._TABLES))}
        words |= {task.input_type.__name__, task.auto_model.__name__}
    # allowed: the command line's documented default, the API's default model class, the built-in task modules
    source = _core_source(module).replace("DEFAULT_TASK = 'classification'", "")
    source = re.sub(r"^_BUILTIN_TASKS = .*$", "", source, flags=re.M)  # one line once unparsed
    if module == "hf_objects.py":
        source = source.replace("AutoModelForSequenceClassification", "")
    found = sorted(w for w in words if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", source))
    if module in ("data.py", "tasks/__init__.py"):  # the core input type, which text tasks share
        found = [w for w in found if w != "HFTextInput"]
    assert found == []


def _imports(path: Path, package: str) -> set[str]:
    "The blurlite modules `path` imports, anywhere in it (inside functions too)."
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([node.module] if node.module else []))
            found |= {base} if node.module else {f"{base}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("blurlite")}
    return found


def test_the_package_has_no_import_circle():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ("blurlite",) + path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        modules[name] = path, package
    graph = {name: {m for m in _imports(path, package) if m in modules} for name, (path, package) in modules.items()}

    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, (*seen, m))) for m in graph[start])

    circles = sorted(name for name in graph if reaches(name, name))
    assert circles == []


def test_the_rank_helpers_import_nothing_of_blurlite():
    assert _imports(PACKAGE / "ranks.py", "blurlite") == set()


def test_fastai_classes_are_unchanged_by_blurlite_learners(request, monkeypatch, tmp_path):
    "Creating, training, exporting and loading blurlite learners of every task, in one process and with WORLD_SIZE=2."
    from fastai.learner import load_learner

    before = fastai_class_attributes()
    for world_size in ("1", "2"):
        monkeypatch.setenv("WORLD_SIZE", world_size)
        for task in registered_tasks():
            dls = task.from_df(task_example(task)["frame"](24), task_checkpoint(request, task), valid_col="is_valid",
                               bs=4)
            learn = hf_learner(dls)
            if world_size == "1":
                with learn.no_bar(), learn.no_logging():
                    learn.fit(1, 1e-3)
                learn.export(tmp_path / "export.pkl")
                load_learner(tmp_path / "export.pkl")
    assert changed_attributes(before, fastai_class_attributes()) == []
    assert "blurlite" not in sys.modules["fastai.distributed"].DistributedTrainer.__init__.__module__
