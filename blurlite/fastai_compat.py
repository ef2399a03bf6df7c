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

__all__ = ["support_mapping_batches", "DOC_IDS"]

# the batch key that says which document each window belongs to (`HFTextBlock(long_texts="windows")`): its
# rows are windows while the targets' rows are documents
DOC_IDS = "doc_ids"

_fastai_nested_reorder = fastai.torch_core.nested_reorder


def nested_reorder(t, idxs):
    "fastai's `nested_reorder`, which also reorders each value of a mapping (dict batches)."
    if isinstance(t, Mapping):
        if DOC_IDS in t:
            return _reorder_documents(t, idxs)
        return type(t)({k: nested_reorder(v, idxs) for k, v in t.items()})
    return _fastai_nested_reorder(t, idxs)


def _reorder_documents(t: Mapping, idxs):
    "Reorder a batch of windows by document: `idxs` are document positions; the windows follow their documents."
    import torch

    doc_ids = t[DOC_IDS]
    rows = [torch.nonzero(doc_ids == int(d)).flatten() for d in idxs]
    order = torch.cat(rows) if rows else doc_ids.new_zeros(0)
    new_ids = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor([len(r) for r in rows], dtype=torch.long))
    return type(t)({k: new_ids.to(doc_ids.device) if k == DOC_IDS else _fastai_nested_reorder(v, order)
                    for k, v in t.items()})


def support_mapping_batches() -> None:
    "Install the mapping-aware `nested_reorder` where fastai looks it up (idempotent)."
    for module in (fastai.torch_core, fastai.learner):
        module.nested_reorder = nested_reorder
