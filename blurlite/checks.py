"""Input validation: clear, early errors that name the row, column or label at fault."""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["is_missing", "plain", "check_frame", "check_columns", "check_texts", "check_labels", "check_binary_columns",
           "check_batch_size", "describe_item"]


def is_missing(value) -> bool:
    "True for None, NaN and pandas' NA/NaT."
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def plain(value):
    "A numpy scalar as the Python value it holds, for readable error messages."
    return value.item() if isinstance(value, np.generic) else value


def _rows(index: Sequence, limit: int = 5) -> str:
    "Row labels for an error message, the first `limit` of them."
    shown = ", ".join(repr(i) for i in list(index)[:limit])
    return shown + (f" (and {len(index) - limit} more)" if len(index) > limit else "")


def check_frame(df: pd.DataFrame) -> None:
    "Raise if `df` is not a non-empty DataFrame."
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if len(df) == 0:
        raise ValueError("the DataFrame is empty: there is nothing to train on")


def check_columns(df: pd.DataFrame, columns: Iterable[str], role: str) -> None:
    "Raise if a column named for `role` is missing from `df`."
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"{role} column(s) {missing} not in the DataFrame; its columns are {list(df.columns)}")


def check_texts(values: Iterable, index: Sequence, column: str | None = None) -> None:
    "Raise on the first text that is missing (None/NaN) or not a `str`, naming its row and column."
    where = f" in column {column!r}" if column else ""
    for row, value in zip(index, values):
        if is_missing(value):
            raise ValueError(f"row {row!r}{where}: the text is missing ({value!r}); drop or fill that row")
        if not isinstance(value, str):
            raise TypeError(f"row {row!r}{where}: expected a str text, got {type(value).__name__} {value!r}; "
                            "convert the column with .astype(str) if that is what you mean")


def check_labels(series: pd.Series, column: str) -> None:
    "Raise on missing labels or on labels of mixed types (1, '1', 2.0) in `series`."
    missing = series.index[series.map(is_missing).to_numpy(dtype=bool)]
    if len(missing):
        raise ValueError(f"column {column!r}: {len(missing)} missing label(s) (None/NaN) at row(s) {_rows(missing)}; "
                         "drop or fill them")
    kinds = series.map(_label_kind)
    if kinds.nunique() > 1:
        examples = "; ".join(f"{kind} {plain(series[kinds == kind].iloc[0])!r} at row {series.index[kinds == kind][0]!r}"
                             for kind in kinds.unique())
        raise TypeError(f"column {column!r} mixes label types ({examples}): one class could be split in two or "
                        f"sorted wrongly. Convert the column to one type, e.g. df[{column!r}].astype(str)")


def _label_kind(value) -> str:
    "The kind of a label for the mixed-type check: bool, int, float, str or the type's name."
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    return "str" if isinstance(value, str) else type(value).__name__


def check_binary_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    "Raise unless every value of the one-hot label `columns` is 0/1 or True/False."
    for column in columns:
        values = df[column]
        bad = values.index[~values.map(lambda v: not is_missing(v) and v in (0, 1)).to_numpy(dtype=bool)]
        if len(bad):
            raise ValueError(f"column {column!r}: multi-label columns must hold 0/1 (or True/False); row "
                             f"{bad[0]!r} holds {plain(values[bad[0]])!r}")


def check_batch_size(n_items: int, bs: int, name: str = "training set") -> None:
    "Raise when `bs` is larger than a non-empty set that drops its last partial batch."
    if 0 < n_items < bs:
        raise ValueError(f"bs={bs} is larger than the {name} ({n_items} rows): an epoch would have no batch. "
                         f"Use bs <= {n_items} or more data")


def describe_item(dataset, i: int) -> str:
    "Where item `i` of a fastai dataset comes from, e.g. \"validation set, row 17\"."
    split = {0: "training set, ", 1: "validation set, "}.get(getattr(dataset, "split_idx", None), "")
    items = getattr(dataset, "items", None)
    if isinstance(items, (pd.DataFrame, pd.Series)):
        return f"{split}row {plain(items.index[i])!r}"
    return f"{split}item {i}"
