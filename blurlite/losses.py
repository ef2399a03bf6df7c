"""Losses shared by the token-level tasks (token classification, masked LM)."""
from __future__ import annotations

from fastai.losses import CrossEntropyLossFlat
from fastcore.foundation import L

from .data import IGNORE_INDEX

__all__ = ["TokenCrossEntropyLossFlat"]


class TokenCrossEntropyLossFlat(CrossEntropyLossFlat):
    "Cross-entropy over labelled tokens only (targets `IGNORE_INDEX` elsewhere): 0, not NaN, when none is labelled."

    def __call__(self, inp, targ, **kwargs):
        if self.reduction != "mean":
            return super().__call__(inp, targ, **kwargs)
        self.reduction = "sum"
        try:
            total = super().__call__(inp, targ, **kwargs)
        finally:
            self.reduction = "mean"
        return total / (targ != IGNORE_INDEX).sum().clamp(min=1)

    def activation(self, x):
        "Softmax over the classes; row by row for `get_preds`' list of rows (batches padded to different lengths)."
        return L(map(super().activation, x)) if isinstance(x, (list, L)) else super().activation(x)

    def decodes(self, x):
        "The predicted class at every position; row by row for a list of rows."
        return L(map(super().decodes, x)) if isinstance(x, (list, L)) else super().decodes(x)
