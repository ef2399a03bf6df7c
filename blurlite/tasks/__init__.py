"""Task registry: a task module describes itself with an `HFTask` and registers it; the core only asks.

The core (data, learner, saving, command line) never names a task: whatever differs between tasks is a field of
`HFTask`, checked when the task is registered. A task defined outside blurlite registers the same way (see the
README, "Adding a task").
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Callable, get_type_hints

# `..data` (torch, fastai) is imported where it is used, so that the command line reads the built-in task names
# and reports a bad argument before those imports (seconds)

__all__ = ["HFTask", "register_task", "get_task", "registered_tasks", "task_for", "load_builtin_tasks",
           "builtin_task_names", "set_model_labels", "pipeline_in_length_order", "logits_as_pred",
           "targets_as_labels", "mean_or_max_of_windows", "texts_and_lines"]

_TASKS: dict[str, "HFTask"] = {}
# The task modules that ship with blurlite, with the names and default columns they register: the command line
# checks its arguments against these before importing torch (a test checks them against the registered tasks).
_BUILTIN_TASKS = {
    "blurlite.tasks.sequence_classification": ("text-classification", ("classification", "sequence-classification"),
                                               ("text", "label")),
    "blurlite.tasks.token_classification": ("token-classification", ("ner",), ("words", "tags")),
    "blurlite.tasks.masked_lm": ("fill-mask", ("masked-lm", "mlm"), ("text", None)),
    "blurlite.tasks.regression": ("text-regression", ("regression",), ("text", "label")),
    "blurlite.tasks.question_answering": ("question-answering", ("qa",), ("question", "answers")),
    "blurlite.tasks.causal_lm": ("causal-lm", ("clm",), ("text", None)),
    "blurlite.tasks.seq2seq": ("seq2seq", ("summarization", "translation"), ("text", "target")),
}


def _no_change(dls, hf_model) -> None:
    return None


def _no_callbacks(dls) -> list:
    return []


def logits_as_pred(outputs):
    "fastai's `pred` from a model's `ModelOutput`: its `logits` (else its first field)."
    logits = getattr(outputs, "logits", None)
    return logits if logits is not None else outputs[0]


def mean_or_max_of_windows(learn, pred):
    """One row per document from the rows of its windows: the mean or max of their logits (the loader's
    `window_agg`), the default `HFTask.combine_windows` (long-document classification)."""
    from ..data import DOC_IDS, aggregate_windows, loader_setting

    return aggregate_windows(pred, learn.xb[0][DOC_IDS], loader_setting(learn, "window_agg", "mean"))


def texts_and_lines(texts: list, options: dict, file) -> list:
    "The default `HFTask.predict_inputs`: the command line's texts, then the non-empty lines of `file`."
    if options:
        raise ValueError(f"{next(iter(options))} is not an option of this model's task")
    lines = [] if file is None else [line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts and not lines:
        raise ValueError("give texts to predict, or --file FILE with one text per line")
    return [*texts, *lines]


def targets_as_labels(yb: tuple) -> dict:
    "The model inputs that carry fastai's targets `yb` to the model's own loss: `labels`, HF's convention."
    return {"labels": yb[0]}


@dataclass(frozen=True)
class HFTask:
    """Everything the core, saving and the command line need to know about a task.

    Required: its name (the id `blurlite.json` and `--task` use), the input type its data block produces, the
    `AutoModelFor...` class, the default loss and metrics, the settings `save_pretrained` writes and the data-free
    `DataLoaders` `load_pretrained_learner` rebuilds from them, the command line's `from_df` and `predict_json`.
    The rest has defaults that suit a classifier over tokenizer outputs.
    """
    name: str
    input_type: type  # a subclass of HFTextInput, made by the task's tokenizing transform
    auto_model: type  # AutoModelFor...: `load_pretrained_learner` loads the artifact with it
    default_loss: Callable  # dls -> loss function
    default_metrics: Callable  # dls -> list of metrics
    settings: Callable  # dls -> JSON-able dict that `inference_dls` rebuilds the data side from
    inference_dls: Callable  # (hf_objects, block_kwargs, settings, bs) -> data-free DataLoaders
    from_df: Callable  # (df, model, *, text_col, label_col, valid_col, valid_pct, bs, max_length, seed, **options)
    predict_json: Callable  # (learn, texts) -> one JSON-able result per text, as the task's pipeline answers
    pipeline: str | None = None  # the transformers pipeline that loads the artifact, e.g. "text-classification"
    # what `pipeline(task.pipeline, model=dir, **pipeline_kwargs)` needs to answer as the learner does (truncation)
    pipeline_kwargs: Mapping = field(default_factory=lambda: MappingProxyType({}))
    accepts: Callable | None = None  # dls -> bool; required when another task shares `input_type`
    prepare_model: Callable = _no_change  # (dls, hf_model) -> None: check the head, write labels into the config
    default_cbs: Callable = _no_callbacks  # dls -> callbacks `hf_learner` adds
    non_model_keys: frozenset = frozenset()  # batch keys the task keeps for itself (not passed to the model)
    pad_values: Mapping = field(default_factory=lambda: MappingProxyType({}))  # key -> pad value, beyond the tokenizer's
    pred_from_outputs: Callable = logits_as_pred  # ModelOutput -> fastai's `pred`
    model_targets: Callable = targets_as_labels  # yb -> model kwargs, for `use_hf_loss=True`
    predict_result: Callable | None = None  # (learn, item, (decoded, decoded_preds, preds)) -> what `predict` returns
    columns: tuple = ("text", "label")  # the command line's default text and label columns (None: no labels)
    readers: Mapping = field(default_factory=lambda: MappingProxyType({}))  # ".suffix" -> path -> (df, from_df options)
    aliases: tuple = ()  # other names `get_task` (and `--task`) accept
    description: str = ""  # one line for `blurlite train --help`
    peft_task_type: str | None = None  # peft's ("SEQ_CLS", ...): the head trains with adapters; None: adapters only
    # (learn, pred) -> pred: one row per document from the rows of its windows, for batches of document windows
    # (`doc_ids` in the batch): classification averages logits, question answering searches spans
    combine_windows: Callable = mean_or_max_of_windows
    # `blurlite predict` options of the task (flag -> help; each takes a value and may repeat), e.g. --question
    predict_options: Mapping = field(default_factory=lambda: MappingProxyType({}))
    # (texts, {flag: [values]}, file or None) -> the inputs `predict_json` answers, from the command line
    predict_inputs: Callable = texts_and_lines
    # with `peft_config`: whether the task's head trains with the adapters and is saved with them (False: adapters
    # only, e.g. a language-model output layer tied to the input embeddings)
    adapter_head: bool = True
    # (learn, inputs, **settings) -> generated texts, as the task's pipeline answers: `learn.generate(...)`
    generate: Callable | None = None
    # (learn, dl, max_n=..., **kwargs) -> None: `learn.show_results` shown by the task itself, for results that need
    # the model (generated text); None: fastai's (the decoded predictions of one batch)
    show_results: Callable | None = None

    def __post_init__(self):
        # accept the obvious spellings (a set of keys, a dict, a list of aliases) and store them frozen
        for name, kind in (("non_model_keys", frozenset), ("aliases", tuple), ("columns", tuple)):
            value = getattr(self, name)
            if isinstance(value, (set, list, tuple, frozenset)) and not isinstance(value, kind):
                object.__setattr__(self, name, kind(value))
        for name in ("pad_values", "readers", "pipeline_kwargs", "predict_options"):
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, MappingProxyType(dict(value)))

    @property
    def display_name(self) -> str:
        return self.name + (f" ({', '.join(self.aliases)})" if self.aliases else "")


_OPTIONAL = {"pipeline", "accepts", "predict_result", "peft_task_type", "generate", "show_results"}


def _check_field(task: HFTask, name: str, hint) -> str | None:
    "What is wrong with `task.<name>`, or None."
    value = getattr(task, name)
    if value is None:
        return None if name in _OPTIONAL else "is missing (None)"
    if hint is Callable or "Callable" in str(hint):
        return None if callable(value) else f"must be callable, got {type(value).__name__}"
    if name == "input_type":
        from ..data import HFTextInput

        if not (isinstance(value, type) and issubclass(value, HFTextInput)):
            return f"must be a subclass of HFTextInput, got {value!r}"
        return None
    if name == "auto_model":
        return None if hasattr(value, "from_pretrained") else f"must be an AutoModelFor... class, got {value!r}"
    if name in ("name", "pipeline", "description", "peft_task_type"):
        return None if isinstance(value, str) and (value or name == "description") else "must be a non-empty str"
    if name in ("non_model_keys", "aliases", "columns"):
        ok = isinstance(value, (frozenset, tuple)) and all(v is None or isinstance(v, str) for v in value)
        return None if ok else f"must be a {'frozenset' if name == 'non_model_keys' else 'tuple'} of str"
    if name == "pad_values":
        ok = isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, int) for k, v in value.items())
        return None if ok else "must map batch keys (str) to pad values (int)"
    if name == "pipeline_kwargs":
        ok = isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
        return None if ok else "must map pipeline argument names (str) to values"
    if name == "predict_options":
        ok = isinstance(value, Mapping) and all(isinstance(k, str) and k.startswith("--") and isinstance(v, str)
                                                 for k, v in value.items())
        return None if ok else "must map command-line flags ('--name') to their help (str)"
    if name == "adapter_head":
        return None if isinstance(value, bool) else f"must be a bool, got {type(value).__name__}"
    if name == "readers":
        ok = isinstance(value, Mapping) and all(isinstance(k, str) and k.startswith(".") and callable(v)
                                                 for k, v in value.items())
        return None if ok else "must map file suffixes ('.ext') to callables path -> (DataFrame, options)"
    return None


def check_task(task) -> None:
    "Raise `TypeError` naming every field of `task` that does not fit the `HFTask` contract."
    if not isinstance(task, HFTask):
        raise TypeError(f"register_task takes an HFTask, got {type(task).__name__}")
    hints = get_type_hints(HFTask)
    problems = [f"{f.name} {p}" for f in fields(HFTask) if (p := _check_field(task, f.name, hints[f.name]))]
    if len(task.columns) != 2:
        problems.append("columns must be (text column, label column or None)")
    if problems:
        raise TypeError(f"task {task.name!r} does not fit the HFTask contract: " + "; ".join(problems))


def register_task(task: HFTask) -> HFTask:
    """Check `task` against the `HFTask` contract and add it to the registry; a name or alias can be taken once.

    Two tasks may share an input type (e.g. text classification and text regression) only if both say, with
    `accepts(dls)`, which `DataLoaders` are theirs.
    """
    check_task(task)
    taken = {n: t.name for t in _TASKS.values() for n in (t.name, *t.aliases)}
    for n in (task.name, *task.aliases):
        if n in taken:
            raise ValueError(f"task name {n!r} is already taken by task {taken[n]!r}")
    for other in _TASKS.values():
        if other.input_type is task.input_type and (other.accepts is None or task.accepts is None):
            raise ValueError(f"task {task.name!r} takes {task.input_type.__name__} inputs, as task {other.name!r} "
                             "does: give it an input type of its own (a subclass) or give both an `accepts(dls)`")
    _TASKS[task.name] = task
    return task


def load_builtin_tasks() -> None:
    "Import the task modules that ship with blurlite (each registers its task)."
    for module in _BUILTIN_TASKS:
        importlib.import_module(module)


def builtin_task_names() -> dict[str, tuple[str, tuple]]:
    "Name or alias -> (task name, default columns) of the built-in tasks, without importing them (fast)."
    return {n: (name, columns) for name, aliases, columns in _BUILTIN_TASKS.values() for n in (name, *aliases)}


def registered_tasks() -> tuple[HFTask, ...]:
    "Every registered task: the built-in ones first, in a fixed order (whichever module was imported first)."
    load_builtin_tasks()
    builtin = [name for name, _, _ in _BUILTIN_TASKS.values()]
    order = {name: i for i, name in enumerate(builtin)}
    return tuple(sorted(_TASKS.values(), key=lambda t: order.get(t.name, len(order))))


def get_task(name: str) -> HFTask:
    "The registered task called `name` (or one of its aliases)."
    builtin = next((m for m, (n, aliases, _) in _BUILTIN_TASKS.items() if name in (n, *aliases)), None)
    if builtin is not None:  # only the module it needs (fast for the command line's predict)
        importlib.import_module(builtin)
    else:
        load_builtin_tasks()
    found = _TASKS.get(name) or next((t for t in _TASKS.values() if name in t.aliases), None)
    if found is None:
        names = sorted(set(_TASKS) | {a for t in _TASKS.values() for a in t.aliases})
        raise KeyError(f"unknown task {name!r}; tasks: {', '.join(names)}")
    return found


def task_for(dls) -> HFTask:
    "The task whose input type the blurlite `DataLoaders` `dls` produce (the most specific match that accepts them)."
    from ..data import find_hf_transform

    load_builtin_tasks()
    input_type = find_hf_transform(dls).input_type
    for cls in input_type.__mro__:
        candidates = [t for t in _TASKS.values() if t.input_type is cls]
        if not candidates:
            continue
        accepted = [t for t in candidates if t.accepts is None or t.accepts(dls)]
        if len(accepted) == 1:
            return accepted[0]
        names = [t.name for t in (accepted or candidates)]
        raise ValueError(f"{'several' if accepted else 'none'} of the tasks for {cls.__name__} inputs ({names}) "
                         "accept these DataLoaders: check the target block against what each task's `accepts` "
                         "takes")
    raise ValueError(f"no registered task handles {input_type.__name__} inputs; tasks: {sorted(_TASKS)}")


def set_model_labels(hf_model, names: list[str]) -> None:
    "Check the head's size against the label names, then write them into the config (`id2label`, `label2id`)."
    config = hf_model.config
    if config.num_labels != len(names):
        raise ValueError(f"the model has {config.num_labels} outputs but the label vocab has {len(names)} labels "
                         f"{names[:10]}: load it with get_hf_objects(..., config_kwargs={{'num_labels': {len(names)}}})")
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}


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
