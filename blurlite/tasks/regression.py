"""Text regression: one or several float targets per text (or text pair), MSE loss, `hf_predict` as the pipeline.

A task module that plugs in through the registry alone: it shares the text block and `HFTextDataLoaders` with
text classification (`y_block=RegressionBlock()` picks it) and says which `DataLoaders` are its own (`accepts`).
"""
from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
import torch
from fastai.data.block import DataBlock, RegressionBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import ColReader, IndexSplitter, RegressionSetup
from fastai.losses import MSELossFlat
from fastai.metrics import AccumMetric, mae, mse
from fasttransform import DisplayedTransform
from transformers import AutoModelForSequenceClassification

from ..checks import check_columns, is_missing, plain
from ..data import HFTextBlock, HFTextInput, find_hf_transform
from . import HFTask, register_task, set_model_labels
from .sequence_classification import (HFTextDataLoaders, TextTargets, hf_predict_json, register_text_targets,
                                      target_transforms)

__all__ = ["FloatColumns", "is_regression", "pearsonr", "PearsonR"]

TASK_NAME = "text-regression"


class FloatColumns(DisplayedTransform):
    "Read float target `columns` of a row as a float32 vector (several regression targets per text)."

    def __init__(self, columns):
        super().__init__()
        self.columns = list(columns)

    def __call__(self, row, **kwargs) -> np.ndarray:  # a getter, like fastai's ColReader: a row in, the value out
        return row[self.columns].to_numpy(dtype=np.float32)


def is_regression(dls) -> bool:
    "True when the targets of `dls` are floats (`RegressionBlock`): text regression's `accepts`."
    return any(isinstance(t, RegressionSetup) for t in target_transforms(dls))


def _is_regression_block(y_block) -> bool:
    if y_block is RegressionBlock:
        return True
    return any(isinstance(t, RegressionSetup) for t in getattr(y_block, "type_tfms", None) or [])


def check_float_targets(df: pd.DataFrame, columns: list[str]) -> None:
    "Raise on the first missing or non-numeric target, naming its row and column."
    check_columns(df, columns, "label")
    for column in columns:
        for row, value in zip(df.index, df[column]):
            if is_missing(value):
                raise ValueError(f"row {row!r}, column {column!r}: the target is missing ({value!r}); drop or fill it")
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise TypeError(f"row {row!r}, column {column!r}: regression targets must be numbers, got "
                                f"{type(value).__name__} {plain(value)!r}; convert the column with "
                                f"pd.to_numeric(df[{column!r}])")


@register_text_targets
def _regression_targets(df, label_col, label_delim, y_block) -> TextTargets | None:
    "Float targets: one column, or a list of columns (one output each), for `y_block=RegressionBlock()`."
    if not _is_regression_block(y_block):
        return None
    if label_delim is not None:
        raise ValueError("label_delim is for multi-label classification; regression reads float columns")
    columns = list(label_col) if isinstance(label_col, list) else [label_col]
    check_float_targets(df, columns)
    n_out = next((t.c for t in getattr(y_block, "type_tfms", []) if isinstance(t, RegressionSetup)), None)
    if n_out is not None and n_out != len(columns):
        raise ValueError(f"RegressionBlock(n_out={n_out}) but label_col names {len(columns)} column(s) {columns}")
    get_y = ColReader(columns[0]) if len(columns) == 1 else FloatColumns(columns)
    return TextTargets(RegressionBlock(n_out=len(columns)), get_y, lambda train: columns,
                       {"problem_type": "regression"})


def _target_names(dls) -> list[str]:
    "The target columns, which name the model's outputs (`id2label`)."
    for t in target_transforms(dls):
        columns = getattr(t, "columns", None) or getattr(t, "cols", None)
        if columns is not None:
            return [str(c) for c in columns]
    return [f"LABEL_{i}" for i in range(dls.c)]


def _prepare_model(dls, hf_model) -> None:
    "Name the outputs after the target columns and mark the config as regression (the pipeline reads both)."
    set_model_labels(hf_model, _target_names(dls))
    hf_model.config.problem_type = "regression"


def pearsonr(preds, targs) -> float:
    "Pearson's r between predictions and targets (every output pooled); nan when either is constant."
    both = torch.stack([preds.reshape(-1).float(), targs.reshape(-1).float()])
    return float(torch.corrcoef(both)[0, 1])


def PearsonR() -> AccumMetric:
    "Pearson's r over the validation set, as fastai's `PearsonCorrCoef` (which cannot be exported: a local function)."
    return AccumMetric(pearsonr, flatten=True)


def _default_loss(dls):
    return MSELossFlat()


def _default_metrics(dls) -> list:
    return [mse, mae, PearsonR()]


def _settings(dls) -> dict:
    return {"labels": _target_names(dls), "text_pair": find_hf_transform(dls).pairs}


def _inference_dls(hf_objects, block_kwargs: dict, settings: dict, bs: int) -> DataLoaders:
    "Data-free `DataLoaders` that turn texts into batches and outputs into values, as the saved learner's did."
    labels = settings["labels"]
    text, text_pair = (next(n for n in (f"_{name}{i}" for i in range(len(labels) + 1)) if n not in labels)
                       for name in ("text", "text_pair"))
    df = pd.DataFrame({text: ["x"] * bs, text_pair: ["x"] * bs, **{c: [0.0] * bs for c in labels}})
    dblock = DataBlock(blocks=(HFTextBlock(*hf_objects, **block_kwargs), RegressionBlock(n_out=len(labels))),
                       get_x=ColReader([text, text_pair] if settings["text_pair"] else text),
                       get_y=ColReader(labels[0]) if len(labels) == 1 else FloatColumns(labels),
                       splitter=IndexSplitter([]))
    return dblock.dataloaders(df, bs=bs).new_empty()


def _from_df(df, model, text_col="text", label_col="label", valid_col=None, valid_pct=0.2, bs=16, max_length=None,
             seed=None, long_texts="truncate", stride=None):
    "The command line's: several target columns as 'a,b'."
    label_col = label_col or "label"
    columns = label_col.split(",") if isinstance(label_col, str) and "," in label_col else label_col
    return HFTextDataLoaders.from_df(df, model, text_col=text_col, label_col=columns, valid_col=valid_col,
                                     valid_pct=valid_pct, bs=bs, max_length=max_length, seed=seed,
                                     y_block=RegressionBlock(), long_texts=long_texts, stride=stride)


TASK = register_task(HFTask(
    name=TASK_NAME, input_type=HFTextInput, auto_model=AutoModelForSequenceClassification,
    default_loss=_default_loss, default_metrics=_default_metrics, settings=_settings, inference_dls=_inference_dls,
    from_df=_from_df, predict_json=hf_predict_json, pipeline="text-classification",
    pipeline_kwargs={"truncation": True, "function_to_apply": "none"}, accepts=is_regression,
    prepare_model=_prepare_model, aliases=("regression",), peft_task_type="SEQ_CLS",
    description="float scores of texts or text pairs (one or several columns, 'a,b' on the command line)"))
