"""Task registry: a task module describes itself with an `HFTask` and registers it; the core only asks."""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["HFTask", "register_task", "get_task", "task_for", "load_builtin_tasks", "set_model_labels",
           "pipeline_in_length_order"]

_TASKS: dict[str, "HFTask"] = {}
_BUILTIN_TASK_MODULES = ("blurlite.tasks.sequence_classification", "blurlite.tasks.token_classification",
                         "blurlite.tasks.masked_lm")


def _no_change(dls, hf_model) -> None:
    return None


def _no_callbacks(dls) -> list:
    return []


def _no_settings(dls) -> dict:
    return {}


@dataclass(frozen=True)
class HFTask:
    "What the core needs to know about a task: its input type, model class, loss, metrics and model set-up."
    name: str  # HF pipeline id, e.g. "text-classification"
    input_type: type  # the input type its data block produces
    auto_model: type  # AutoModelFor...
    default_loss: Callable  # dls -> loss function
    default_metrics: Callable  # dls -> list of metrics
    prepare_model: Callable = field(default=_no_change)  # (dls, hf_model) -> None: align the config with the data
    default_cbs: Callable = field(default=_no_callbacks)  # dls -> callbacks `hf_learner` adds
    aliases: tuple = ()  # other names `get_task` (and the command line's --task) accept
    # saving and the command line
    settings: Callable = field(default=_no_settings)  # dls -> JSON-able dict that `inference_dls` rebuilds from
    inference_dls: Callable | None = None  # (hf_objects, block_kwargs, settings, bs) -> DataLoaders, no data needed
    from_df: Callable | None = None  # (df, model, text_col, label_col, valid_col, valid_pct, bs, max_length, seed)
    predict_json: Callable | None = None  # (learn, texts) -> one JSON-able result per text, as the HF pipeline's


def set_model_labels(hf_model, names: list[str]) -> None:
    "Check the head's size against the label names, then write them into the config (`id2label`, `label2id`)."
    config = hf_model.config
    if config.num_labels != len(names):
        raise ValueError(f"the model has {config.num_labels} outputs but the label vocab has {len(names)} labels "
                         f"{names[:10]}: load it with get_hf_objects(..., config_kwargs={{'num_labels': {len(names)}}})")
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}


def register_task(task: HFTask) -> HFTask:
    "Add `task` to the registry; a name can be registered once."
    if task.name in _TASKS:
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def load_builtin_tasks() -> None:
    "Import the task modules that ship with blurlite (each registers its task)."
    for module in _BUILTIN_TASK_MODULES:
        importlib.import_module(module)


def get_task(name: str) -> HFTask:
    "The registered task called `name` (or one of its aliases)."
    load_builtin_tasks()
    found = _TASKS.get(name) or next((t for t in _TASKS.values() if name in t.aliases), None)
    if found is None:
        names = sorted(set(_TASKS) | {a for t in _TASKS.values() for a in t.aliases})
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(names)}")
    return found


def task_for(dls) -> HFTask:
    "The task whose input type the blurlite `DataLoaders` `dls` produce (the most specific match)."
    from ..data import find_hf_transform

    load_builtin_tasks()
    input_type = find_hf_transform(dls).input_type
    for cls in input_type.__mro__:
        for task in _TASKS.values():
            if task.input_type is cls:
                return task
    raise ValueError(f"no registered task handles {input_type.__name__} inputs; tasks: {sorted(_TASKS)}")


def pipeline_in_length_order(pipe, texts: list, bs: int, lengths: list[int], **kwargs) -> list:
    """`pipe(texts, batch_size=bs, **kwargs)`, run on the texts longest first (by their token counts `lengths`:
    batches then pad little), results in the order of `texts`. HF pipelines batch texts as given: mixed lengths pad
    every batch to its longest."""
    if bs < 1:
        raise ValueError(f"bs must be at least 1, got {bs}")
    if not texts:
        return []
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    results = pipe([texts[i] for i in order], batch_size=bs, **kwargs)
    out = [None] * len(texts)
    for j, i in enumerate(order):
        out[i] = results[j]
    return out
