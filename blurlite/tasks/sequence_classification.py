"""Sequence classification: single-label, multi-label and text pairs; `HFTextDataLoaders`, display, `hf_predict`."""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import pandas as pd
import torch
from fastai.data.block import CategoryBlock, DataBlock, MultiCategoryBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import (Categorize, CategoryMap, ColReader, EncodedMultiCategorize, IndexSplitter,
                                    MultiCategorize)
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import F1Score, F1ScoreMulti, accuracy, accuracy_multi
from fastai.torch_core import display_df, to_device
from fastcore.basics import patch
from plum import dispatch
from transformers import AutoModelForSequenceClassification

from ..checks import check_binary_columns, check_columns, check_frame, check_labels, check_texts
from ..data import (DOC_IDS, HFTextBlock, HFTextInput, HFTextPair, aggregate_windows, find_hf_transform, is_document,
                    split_rows, truncate_words)
from ..hf_objects import get_hf_objects
from . import HFTask, load_builtin_tasks, register_task, set_model_labels, task_for

__all__ = ["HFTextDataLoaders", "OneHotColumns", "TextTargets", "register_text_targets", "is_multi_label",
           "target_transforms"]

TASK_NAME = "text-classification"


def target_transforms(dls) -> list:
    "The transforms of the targets' pipeline of `dls` (getter included); empty without targets."
    return list(dls.train_ds.tls[1].tfms.fs) if len(getattr(dls.train_ds, "tls", [])) > 1 else []


def is_multi_label(dls) -> bool:
    "True when the targets of `dls` are multi-label (`MultiCategoryBlock`)."
    return any(isinstance(t, (MultiCategorize, EncodedMultiCategorize)) for t in target_transforms(dls))


def _is_categorical(dls) -> bool:
    "Whether `dls` has category targets (single or multi-label): text classification's `accepts`."
    return any(isinstance(t, (Categorize, MultiCategorize, EncodedMultiCategorize)) for t in target_transforms(dls))


def _label_names(dls) -> list[str]:
    return [str(v) for v in dls.vocab]


def _prepare_model(dls, hf_model) -> None:
    "Write the labels and the problem type into the model's config, after checking the head's size."
    set_model_labels(hf_model, _label_names(dls))
    hf_model.config.problem_type = ("multi_label_classification" if is_multi_label(dls)
                                    else "single_label_classification")


def _default_loss(dls):
    return getattr(dls.train_ds, "loss_func", None) or CrossEntropyLossFlat()


def _default_metrics(dls) -> list:
    "Accuracy and F1: binary F1 for two classes, macro F1 beyond (binary F1 fails on more than two)."
    if is_multi_label(dls):
        return [accuracy_multi, F1ScoreMulti(average="macro")]
    return [accuracy, F1Score() if len(dls.vocab) == 2 else F1Score(average="macro")]


class OneHotColumns:
    "Read 0/1 label `columns` of a row as a float vector (multi-label targets from one-hot columns)."

    def __init__(self, columns):
        self.columns = list(columns)

    def __call__(self, row) -> np.ndarray:
        return row[self.columns].to_numpy(dtype=np.float32)


def _label_sets(df: pd.DataFrame, label_col, label_delim) -> list[list]:
    "The labels of each row, as lists (one-hot columns and delimited strings included)."
    if isinstance(label_col, list):
        return [[c for c in label_col if row[c]] for _, row in df[label_col].iterrows()]
    if label_delim is not None:
        return [v.split(label_delim) if v else [] for v in df[label_col]]
    return [[v] for v in df[label_col]]


def _check_valid_labels(df, train, valid, label_sets, column) -> None:
    "Raise on a validation label that the training set never shows: its class would have no output."
    known = {label for i in train for label in label_sets[i]}
    for i in valid:
        unknown = [label for label in label_sets[i] if label not in known]
        if unknown:
            raise ValueError(f"validation row {df.index[i]!r}, column {column!r}: label {unknown[0]!r} never appears "
                             "in the training set; move such rows to training or drop them")


def _category_block(df: pd.DataFrame, label_col, label_delim):
    "The target block and getter for single-label, delimited multi-label or one-hot multi-label columns."
    check_columns(df, label_col if isinstance(label_col, list) else [label_col], "label")
    if isinstance(label_col, list):
        check_binary_columns(df, label_col)
        return MultiCategoryBlock(encoded=True, vocab=label_col), OneHotColumns(label_col)
    check_labels(df[label_col], label_col)
    if label_delim is not None:
        check_texts(df[label_col], df.index, label_col)
        return MultiCategoryBlock(), ColReader(label_col, label_delim=label_delim)
    return CategoryBlock(), ColReader(label_col)


class TextTargets(NamedTuple):
    "How `HFTextDataLoaders.from_df` reads one kind of target (what a `register_text_targets` reader returns)."
    y_block: object  # the fastai block of the targets
    get_y: Callable  # row -> target
    names: Callable  # training row positions -> the head's output names (id2label)
    config: dict  # more config settings of the head, e.g. {"problem_type": "regression"}
    check_split: Callable | None = None  # (train, valid) -> None: raise on a split the model cannot learn


_TARGET_READERS: list[Callable] = []


def register_text_targets(reader: Callable) -> Callable:
    """Teach `HFTextDataLoaders.from_df` a kind of target: `reader(df, label_col, label_delim, y_block)` returns
    `TextTargets`, or None for a `y_block` it does not read. The most recently registered reader is asked first."""
    _TARGET_READERS.insert(0, reader)
    return reader


@register_text_targets
def _category_targets(df, label_col, label_delim, y_block) -> TextTargets | None:
    "Categories: single-label, delimited multi-label or one-hot columns (`y_block` None, as fastai's default)."
    if y_block not in (None, CategoryBlock, MultiCategoryBlock):
        return None
    block, get_y = _category_block(df, label_col, label_delim)
    label_sets = _label_sets(df, label_col, label_delim)

    def names(train):
        return label_col if isinstance(label_col, list) else list(
            CategoryMap([lb for i in train for lb in label_sets[i]], sort=True))

    def check_split(train, valid):
        _check_valid_labels(df, train, valid, label_sets, label_col)

    return TextTargets(block, get_y, names, {}, check_split)


def _text_targets(df, label_col, label_delim, y_block) -> TextTargets:
    load_builtin_tasks()  # their target readers (regression's)
    for reader in _TARGET_READERS:
        targets = reader(df, label_col, label_delim, y_block)
        if targets is not None:
            return targets
    raise ValueError(f"HFTextDataLoaders.from_df cannot read targets for y_block={y_block!r}: leave it out for "
                     "classification, or pass RegressionBlock() for regression")


class HFTextDataLoaders(DataLoaders):
    "Factory for text classification and regression `DataLoaders`, in the idiom of fastai's `TextDataLoaders`."

    @classmethod
    def from_df(cls, df: pd.DataFrame, hf_objects_or_checkpoint, text_col="text", label_col="label",
                valid_col=None, valid_pct: float = 0.2, bs: int = 16, max_length: int | None = None,
                label_delim: str | None = None, seed: int | None = None, padding=True, tok_kwargs=None,
                y_block=None, long_texts: str = "truncate", stride: int | None = None, window_agg: str = "mean",
                **kwargs) -> DataLoaders:
        """`DataLoaders` from `df`, validated up front; errors name the row and column at fault.

        `text_col`: a column, or two for text pairs. `label_col`: a column (single-label, or multi-label with
        `label_delim`), or a list of 0/1 columns (multi-label). `y_block=RegressionBlock()`: float targets in
        `label_col` (a column or a list of columns) for text regression. `hf_objects_or_checkpoint`: what
        `get_hf_objects` returns, or a checkpoint directory to load with a head sized to the targets (the model is
        then `dls.hf_model`). `long_texts="windows"`: a text longer than `max_length` becomes overlapping windows
        (`stride` tokens shared, default max_length // 4), each a training item with its text's target; validation,
        `get_preds` and predictions are per text, from the mean (`window_agg="mean"`) or max of its windows' logits.
        Example: `dls = HFTextDataLoaders.from_df(df, ckpt_dir, text_col="text", label_col="label", valid_col="is_valid")`
        """
        check_frame(df)
        text_cols = list(text_col) if isinstance(text_col, (list, tuple)) else [text_col]
        if len(text_cols) not in (1, 2):
            raise ValueError(f"text_col takes one column or two (a text pair), got {text_cols}")
        check_columns(df, text_cols, "text")
        for column in text_cols:
            check_texts(df[column], df.index, column)
        if isinstance(label_col, (list, tuple)):
            label_col = label_col[0] if len(label_col) == 1 else list(label_col)
        targets = _text_targets(df, label_col, label_delim, y_block)
        train, valid = split_rows(df, valid_col, valid_pct, seed)
        if targets.check_split is not None:
            targets.check_split(train, valid)
        hf_objects = hf_objects_or_checkpoint
        if not isinstance(hf_objects, tuple):
            names = [str(v) for v in targets.names(train)]
            hf_objects = get_hf_objects(hf_objects, config_kwargs=dict(
                num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
                **targets.config))
        windows = {} if long_texts == "truncate" else dict(long_texts=long_texts, stride=stride, window_agg=window_agg)
        dblock = DataBlock(blocks=(HFTextBlock(*hf_objects, max_length=max_length, padding=padding,
                                               tok_kwargs=tok_kwargs, **windows), targets.y_block),
                           get_x=ColReader(text_cols if len(text_cols) == 2 else text_cols[0]), get_y=targets.get_y,
                           splitter=IndexSplitter(valid))
        dls = dblock.dataloaders(df, bs=bs, **kwargs)
        dls.hf_model = hf_objects[3]
        return dls


# display: registered on the input type, so fastai's own show_batch/show_results call these (for every task whose
# inputs are `HFTextInput`: classification and regression)
def _value(v) -> str:
    return f"{float(v):.4g}" if isinstance(v, float) else str(v)


def _shown(value) -> str:
    "A target or prediction as text: a label or a value; labels or values joined with '; ' (multi-label, -output)."
    if isinstance(value, (list, tuple)) or (hasattr(value, "items") and not isinstance(value, str)):
        return "; ".join(_value(v) for v in value)
    return _value(value)


def _is_value(target) -> bool:
    "A regression target (a float, or a tuple of floats), rather than labels."
    return isinstance(target, float) or (isinstance(target, tuple) and all(isinstance(v, float) for v in target))


def _text_columns(x, trunc_at) -> dict:
    if isinstance(x, HFTextPair):
        return {"text": truncate_words(x.text, trunc_at), "text_pair": truncate_words(x.text_pair, trunc_at)}
    return {"text": truncate_words(x, trunc_at)}


@dispatch
def show_batch(x: HFTextInput, y, samples, ctxs=None, max_n=10, trunc_at=150, **kwargs):
    rows = [{**_text_columns(s[0], trunc_at), **({"target": _shown(s[1])} if len(s) > 1 else {})}
            for s in samples[:max_n]]
    display_df(pd.DataFrame(rows))
    return ctxs


@dispatch
def show_results(x: HFTextInput, y, samples, outs, ctxs=None, max_n=10, trunc_at=150, **kwargs):
    rows = [{**_text_columns(s[0], trunc_at), "target": _shown(s[1]), "prediction": _shown(o[0])}
            for s, o in zip(samples[:max_n], outs)]
    display_df(pd.DataFrame(rows))
    return ctxs


@dispatch
def plot_top_losses(x: HFTextInput, y, samples, outs, raw_outs, losses, trunc_at=150, **kwargs):
    rows = [{**_text_columns(s[0], trunc_at), "target": _shown(s[1]), "predicted": _shown(o[0]),
             **({} if _is_value(s[1]) else {"probability": float(r.max())}), "loss": float(loss)}
            for s, o, r, loss in zip(samples, outs, raw_outs, losses)]
    display_df(pd.DataFrame(rows))


def _scores(learn):
    """What turns logits into the pipeline's scores: the loss function's activation if it has one, else by the
    config's problem type, as `pipeline("text-classification")` picks: softmax, sigmoid (multi-label) or none
    (regression)."""
    activation = getattr(learn.loss_func, "activation", None)
    if activation is not None:
        return activation
    problem = getattr(learn.model.hf_model.config, "problem_type", None)
    if problem == "regression":
        return lambda o: o
    return torch.sigmoid if problem == "multi_label_classification" else (lambda o: torch.softmax(o, dim=-1))


def _as_items(texts, pairs: bool) -> tuple[list, bool]:
    "`texts` as a list of items, and whether it was one item: a str, a {'text', 'text_pair'} dict, a pair (pair learners)."
    if isinstance(texts, dict):
        return [(texts["text"], texts["text_pair"])], True
    if isinstance(texts, str) or (pairs and isinstance(texts, tuple) and len(texts) == 2
                                  and all(isinstance(t, str) for t in texts)):
        return [texts], True
    return [(t["text"], t["text_pair"]) if isinstance(t, dict) else t for t in texts], False


@patch
def hf_predict(self: Learner, texts, bs: int | None = None, top_k: int | None = 1):
    """Classify `texts` like `pipeline("text-classification")`: `[{"label", "score"}]` per text, in input order.

    Texts are tokenized in one call and run in length-sorted batches. `top_k=None` returns every output's score per
    text, best first. A single text gives a one-element list, as the pipeline does. A text pair is a `(text,
    text_pair)` tuple or a `{"text", "text_pair"}` dict; a 2-tuple of str is one pair only for a learner trained on
    pairs (else two texts). Regression learners answer as `pipeline(..., function_to_apply="none")`. A learner
    trained with `long_texts="windows"` scores a text of any length from its windows' aggregated logits (windows
    run `bs` at a time); one trained with truncation sees a text's first `max_length` tokens, as the pipeline does.
    """
    task = task_for(self.dls)
    if task.pipeline != TASK_NAME:
        raise TypeError(f"hf_predict is for learners whose pipeline is {TASK_NAME}; this learner is for {task.name}")
    tfm, dl = find_hf_transform(self.dls), self.dls.valid
    items, single = _as_items(texts, tfm.pairs)
    inputs = tfm.tokenize([tfm.key(t, lambda: f"text {i}") for i, t in enumerate(items)])
    bs, probs = bs or dl.bs or 16, [None] * len(items)
    windows = bool(inputs) and is_document(inputs[0])
    if windows:  # `bs` documents a batch, their windows through the model `bs` at a time
        order = np.argsort([-sum(len(w) for w in x["input_ids"]) for x in inputs], kind="stable")
        getattr(self.model, "module", self.model).window_bs = bs
    else:
        order = np.argsort([-len(x["input_ids"]) for x in inputs], kind="stable")
    activation, device = _scores(self), next(self.model.parameters()).device
    self.model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), bs):
            chunk = order[start:start + bs]
            batch = dl.create_batch([(inputs[i],) for i in chunk])[0]
            logits = task.pred_from_outputs(self.model(to_device(dict(batch), device)))
            if windows:
                logits = aggregate_windows(logits, batch[DOC_IDS], getattr(dl, "window_agg", tfm.window_agg))
            for i, p in zip(chunk, activation(logits.float()).cpu()):
                probs[i] = p
    config = self.model.hf_model.config
    names = [str(config.id2label[i]) for i in range(config.num_labels)]
    results = [_ranked(p, names, top_k) for p in probs]
    return results[0] if single and top_k is None else [r[0] for r in results] if top_k == 1 else results


def _ranked(probs: torch.Tensor, names: list[str], top_k: int | None) -> list[dict]:
    scores, idxs = probs.sort(descending=True)
    k = len(names) if top_k is None else min(top_k, len(names))
    return [{"label": names[i], "score": s} for s, i in zip(scores[:k].tolist(), idxs[:k].tolist())]


# saving and the command line
_DELIM = "\x1f"  # joins labels of a placeholder row; no label holds it


def _settings(dls) -> dict:
    return {"labels": _label_names(dls), "multi_label": is_multi_label(dls), "text_pair": find_hf_transform(dls).pairs}


def _inference_dls(hf_objects, block_kwargs: dict, settings: dict, bs: int) -> DataLoaders:
    "Data-free `DataLoaders` that turn texts into batches and predictions into labels, as the saved learner's did."
    labels = settings["labels"]
    rows = [labels[i % len(labels)] for i in range(max(bs, len(labels)))]
    df = pd.DataFrame({"text": ["x"] * len(rows), "text_pair": ["x"] * len(rows), "label": rows})
    y_block = (MultiCategoryBlock(vocab=labels) if settings["multi_label"] else CategoryBlock(vocab=labels, sort=False))
    dblock = DataBlock(blocks=(HFTextBlock(*hf_objects, **block_kwargs), y_block),
                       get_x=ColReader(["text", "text_pair"] if settings["text_pair"] else "text"),
                       get_y=ColReader("label", label_delim=_DELIM if settings["multi_label"] else None),
                       splitter=IndexSplitter([]))
    return dblock.dataloaders(df, bs=bs).new_empty()


def _from_df(df, model, text_col="text", label_col="label", valid_col=None, valid_pct=0.2, bs=16, max_length=None,
             seed=None, long_texts="truncate", stride=None):
    return HFTextDataLoaders.from_df(df, model, text_col=text_col, label_col=label_col or "label",
                                     valid_col=valid_col, valid_pct=valid_pct, bs=bs, max_length=max_length, seed=seed,
                                     long_texts=long_texts, stride=stride)


def hf_predict_json(learn, texts: list) -> list:
    "The command line's answer for tasks whose pipeline is text-classification: `hf_predict`'s dicts."
    return learn.hf_predict(texts)


TASK = register_task(HFTask(
    name=TASK_NAME, input_type=HFTextInput, auto_model=AutoModelForSequenceClassification,
    default_loss=_default_loss, default_metrics=_default_metrics, settings=_settings, inference_dls=_inference_dls,
    from_df=_from_df, predict_json=hf_predict_json, pipeline="text-classification",
    pipeline_kwargs={"truncation": True}, accepts=_is_categorical,
    prepare_model=_prepare_model, aliases=("classification", "sequence-classification"), peft_task_type="SEQ_CLS",
    description="labels of texts or text pairs: single-label, or multi-label (delimited or 0/1 columns)"))
