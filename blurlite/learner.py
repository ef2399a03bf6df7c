"""Run Hugging Face models in a fastai `Learner`: model wrapper, callback, splitter and `hf_learner`."""
from __future__ import annotations

import torch
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.torch_core import num_distrib
from fastcore.basics import patch
from fastcore.foundation import L
from torch import nn

from .data import NON_MODEL_KEYS
from .fastai_compat import support_mapping_batches
from .tasks import load_builtin_tasks, task_for
from .versions import check_versions, stack_versions

__all__ = ["HFModelWrapper", "HFModelCallback", "hf_splitter", "hf_learner"]


# a learner loaded from an export must find its task's methods (`hf_predict`, ...) patched onto `Learner`
load_builtin_tasks()


class HFModelWrapper(nn.Module):
    "An `nn.Module` whose forward takes the dict batch: `forward(x)` returns `hf_model(**x)` (blurlite's own keys left out)."

    def __init__(self, hf_model: nn.Module):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, x: dict):
        return self.hf_model(**{k: v for k, v in x.items() if k not in NON_MODEL_KEYS})


def _support_distributed_if_launched() -> None:
    "In a process launched as one of several (torchrun), install blurlite's fixes to fastai's distributed path."
    if num_distrib() > 1:
        from .distributed import support_distributed

        support_distributed()


def _plain(t):
    "A plain `torch.Tensor` view of fastai's tensor subclasses, for code outside fastai."
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


class HFModelCallback(Callback):
    """Translate between fastai and a Hugging Face model.

    Logits go to fastai's loss and metrics; the model's `ModelOutput` stays reachable as `learn.hf_outputs`.
    With `use_hf_loss=True` the targets are passed to the model as `labels` and its own loss is optimised.
    """
    order = -5  # before metrics and the recorder read `pred`

    def __init__(self, use_hf_loss: bool = False):
        support_mapping_batches()
        _support_distributed_if_launched()
        self.use_hf_loss, self.model_outputs = use_hf_loss, None

    def __getstate__(self):
        # the last batch's outputs are not part of a saved learner; the versions it was written with are
        return {**self.__dict__, "model_outputs": None, "versions": stack_versions()}

    def __setstate__(self, state):
        # `load_learner` of an export from incompatible versions: a clear error, not a subtly wrong model
        check_versions(state.get("versions", {}), "this exported learner", pickled=True)
        _support_distributed_if_launched()
        self.__dict__.update(state)

    def before_batch(self):
        if self.use_hf_loss and len(self.yb):
            self.learn.xb = ({**self.xb[0], "labels": _plain(self.yb[0])},)

    def after_pred(self):
        self.model_outputs = self.pred
        logits = getattr(self.pred, "logits", None)
        self.learn.pred = logits if logits is not None else self.pred[0]

    def after_loss(self):
        loss = getattr(self.model_outputs, "loss", None)
        if self.use_hf_loss and loss is not None:
            self.learn.loss_grad = loss
            self.learn.loss = loss.detach().clone()


@patch(as_prop=True)
def hf_outputs(self: Learner):
    "The Hugging Face `ModelOutput` of the last batch (None before any batch)."
    return next((cb.model_outputs for cb in self.cbs if isinstance(cb, HFModelCallback)), None)


def _encoder_blocks(base: nn.Module) -> nn.ModuleList:
    "The transformer blocks: the `nn.ModuleList` holding the most parameters."
    lists = [m for m in base.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        return nn.ModuleList()
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def hf_splitter(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameter groups: embeddings, one group per encoder block, then the head.

    Parameters of the base model registered after the blocks (a pooler, a final norm) join the head. This makes
    `freeze()` (train the head), `unfreeze()` and discriminative learning rates `slice(lo, hi)` work.
    """
    hf_model = getattr(model, "hf_model", model)
    base = getattr(hf_model, "base_model", hf_model)
    blocks = _encoder_blocks(base)
    block_of = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    groups = [[] for _ in range(len(blocks) + 2)]
    seen, after_blocks = set(), False
    for p in base.parameters():
        if id(p) in block_of:
            groups[1 + block_of[id(p)]].append(p)
            after_blocks = True
        else:
            groups[-1 if after_blocks else 0].append(p)
        seen.add(id(p))
    groups[-1] += [p for p in model.parameters() if id(p) not in seen]
    return [g for g in groups if g]


def hf_learner(dls, hf_model: nn.Module | None = None, loss_func=None, metrics=None, cbs=None,
               splitter=hf_splitter, use_hf_loss: bool = False, **learner_kwargs) -> Learner:
    """A fastai `Learner` for `hf_model` on blurlite `dls`, with the task's loss, metrics and callbacks by default.

    Example: `learn = hf_learner(dls, hf_model); learn.fit_one_cycle(1, 1e-4)`. `hf_model` defaults to the model
    `HFTextDataLoaders.from_df` loaded, when it was given a checkpoint.
    """
    task = task_for(dls)
    if hf_model is None:
        hf_model = getattr(dls, "hf_model", None)
        if hf_model is None:
            raise ValueError("pass hf_model: these DataLoaders carry no model")
    task.prepare_model(dls, hf_model)
    loss_func = task.default_loss(dls) if loss_func is None else loss_func
    metrics = task.default_metrics(dls) if metrics is None else metrics
    cbs = [HFModelCallback(use_hf_loss=use_hf_loss)] + task.default_cbs(dls) + list(L(cbs))
    return Learner(dls, HFModelWrapper(hf_model), loss_func=loss_func, metrics=metrics, cbs=cbs,
                   splitter=splitter, **learner_kwargs)


from . import serialization  # noqa: E402,F401  (patches Learner.save_pretrained; needs hf_learner, defined above)
