"""The one change blurlite makes to fastai's own code paths: batches whose input is a dict of tensors.

Everything else extends fastai without changing it (subclasses such as `HFLearner`, callbacks, new methods).

fastai walks batches with helpers that know tensors, tuples and lists. Hugging Face models take a dict, so
`Learner.get_preds(with_input=True)` (used by `predict`, `Interpretation`, ...) fails in `nested_reorder` with
"Expected tensor, tuple, list or L but got <class 'dict'>". `support_mapping_batches` teaches `nested_reorder` to
reorder every value of a mapping; every other input takes fastai's own code path unchanged.
"""
from __future__ import annotations

from collections.abc import Mapping

import fastai.learner
import fastai.torch_core

__all__ = ["support_mapping_batches"]

_fastai_nested_reorder = fastai.torch_core.nested_reorder


def nested_reorder(t, idxs):
    "fastai's `nested_reorder`, which also reorders each value of a mapping (dict batches)."
    if isinstance(t, Mapping):
        return type(t)({k: nested_reorder(v, idxs) for k, v in t.items()})
    return _fastai_nested_reorder(t, idxs)


def support_mapping_batches() -> None:
    "Install the mapping-aware `nested_reorder` where fastai looks it up (idempotent)."
    for module in (fastai.torch_core, fastai.learner):
        module.nested_reorder = nested_reorder
