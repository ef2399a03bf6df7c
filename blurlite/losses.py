"""Losses shared by the token-level tasks (token classification, masked LM)."""
from __future__ import annotations

from fastai.losses import CrossEntropyLossFlat

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
