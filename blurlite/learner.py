"""Run Hugging Face models in a fastai `Learner`: model wrapper, callback, splitter and `hf_learner`."""
from __future__ import annotations

import inspect
import pickle
import warnings
from collections.abc import Mapping

import torch
from fastai.callback.core import Callback, GatherPredsCallback
from fastai.callback.progress import ProgressCallback
import fastai.callback.schedule  # noqa: F401  (defines Learner.lr_find, which HFLearner extends)
from fastai.distributed import DistributedTrainer
from fastai.learner import Learner
from fastai.torch_core import num_distrib, rank_distrib
from fastcore.basics import patch
from fastcore.foundation import L
from torch import nn

from . import serialization  # noqa: F401  (defines Learner.save_pretrained, which every blurlite learner has)
from .adapters import add_adapters, check_adapter_task, has_adapters, plain_model
from .distributed import HFDistributedTrainer, export_on_rank0
from .data import IGNORE_INDEX, loader_setting, pad_batches
from .fastai_compat import DOC_IDS, support_mapping_batches
from .mixed_precision import hf_to_bf16, learner_device
from .optimizer import HFAdamW
from .tasks import load_builtin_tasks, logits_as_pred, mean_or_max_of_windows, targets_as_labels, task_for
from .versions import check_versions, stack_versions

__all__ = ["HFModelWrapper", "HFModelCallback", "HFLearner", "hf_splitter", "hf_learner"]


# a learner loaded from an export must find its task's methods (`hf_predict`, ...) patched onto `Learner`
load_builtin_tasks()


class HFModelWrapper(nn.Module):
    """An `nn.Module` whose forward takes the dict batch: `forward(x)` returns `hf_model(**x)`.

    `non_model_keys`: batch keys that are not model inputs (a task's own, such as word ids), left out; `hf_learner`
    passes the task's. With None, as the HF `Trainer` does, only the keys the model's `forward` names are passed.
    A batch of document windows (`doc_ids`, never a model input) runs in chunks of `window_bs` windows (set by
    `HFModelCallback` to the loader's `bs`), so that a very long document fits in memory.
    A `peft` model's trainable parameters (adapters, head) are recorded by name: `hf_splitter` gives only those to
    the optimizer, so that `freeze()`/`unfreeze()` never make base weights trainable.
    """
    window_bs = None  # class default: wrappers pickled before long documents existed

    def __init__(self, hf_model: nn.Module, non_model_keys=None):
        super().__init__()
        self.hf_model = hf_model
        self.non_model_keys = None if non_model_keys is None else frozenset(non_model_keys) | {DOC_IDS}
        self._forward_keys = None
        self.adapter_params = (frozenset(n for n, p in hf_model.named_parameters() if p.requires_grad)
                               if has_adapters(hf_model) else None)

    def model_inputs(self, x: dict) -> dict:
        "The entries of batch `x` that go to the model."
        if self.non_model_keys is not None:
            return {k: v for k, v in x.items() if k not in self.non_model_keys}
        if self._forward_keys is None:
            # a peft model's forward names a few inputs and passes the rest (**kwargs): its base model names them all
            params = inspect.signature(plain_model(self.hf_model).forward).parameters.values()
            named = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            self._forward_keys = frozenset(named) if named else None
        return x if self._forward_keys is None else {k: v for k, v in x.items() if k in self._forward_keys}

    def run_model(self, **inputs):
        """`hf_model(**inputs)`. An adapter model's transformers model is called directly (its adapter layers sit
        inside it): peft's task wrappers name inputs they do not pass on (`PeftModelForQuestionAnswering` drops
        `token_type_ids`), which would train and answer differently from the merged or reloaded model."""
        model = self.hf_model
        config = getattr(model, "active_peft_config", None) if has_adapters(model) else None
        if config is not None and not config.is_prompt_learning:
            return model.get_base_model()(**inputs)
        return model(**inputs)

    def forward(self, x: dict):
        if DOC_IDS in x and self.window_bs and len(x[DOC_IDS]) > self.window_bs:
            return self._forward_in_chunks(x)
        return self.run_model(**self.model_inputs(x))

    def _forward_in_chunks(self, x: dict):
        "The model's output on a batch of windows, computed `window_bs` windows at a time (per-window outputs, loss)."
        inputs, n = self.model_inputs(x), len(x[DOC_IDS])
        outs = [self.run_model(**{k: v[i:i + self.window_bs] if isinstance(v, torch.Tensor) and len(v) == n else v
                                 for k, v in inputs.items()}) for i in range(0, n, self.window_bs)]
        first, sizes = outs[0], [min(self.window_bs, n - i) for i in range(0, n, self.window_bs)]
        for key, value in first.items():  # per-window outputs (logits, start_logits, ...) joined
            if isinstance(value, torch.Tensor) and value.ndim and key != "loss" and len(value) == sizes[0]:
                first[key] = torch.cat([o[key] for o in outs])
        if getattr(first, "loss", None) is not None:  # the mean over windows, as in one call
            first["loss"] = sum(o["loss"] * s for o, s in zip(outs, sizes)) / n
        return first


def _plain(t):
    "A plain `torch.Tensor` view of fastai's tensor subclasses, for code outside fastai."
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


class HFModelCallback(Callback):
    """Translate between fastai and a Hugging Face model.

    `pred_from_outputs` turns the model's `ModelOutput` into fastai's `pred` (default: its logits), for the loss and
    metrics; the `ModelOutput` stays reachable as `learn.hf_outputs`. With `use_hf_loss=True`, `model_targets`
    passes the targets to the model (default: as `labels`) and its own loss is optimised. On a batch of document
    windows, `combine_windows(learn, pred)` makes one row per document (default: the mean or max of the windows'
    logits). `hf_learner` passes the task's.
    """
    order = -5  # before metrics and the recorder read `pred`

    def __init__(self, use_hf_loss: bool = False, pred_from_outputs=logits_as_pred, model_targets=targets_as_labels,
                 combine_windows=mean_or_max_of_windows):
        support_mapping_batches()
        self.use_hf_loss, self.model_outputs = use_hf_loss, None
        self.pred_from_outputs, self.model_targets = pred_from_outputs, model_targets
        self.combine_windows = combine_windows

    def __getstate__(self):
        # the last batch's outputs are not part of a saved learner; the versions it was written with are
        return {**self.__dict__, "model_outputs": None, "versions": stack_versions()}

    def __setstate__(self, state):
        # `load_learner` of an export from incompatible versions: a clear error, not a subtly wrong model
        check_versions(state.get("versions", {}), "this exported learner", pickled=True)
        support_mapping_batches()
        self.__dict__.update({"pred_from_outputs": logits_as_pred, "model_targets": targets_as_labels,
                              "combine_windows": mean_or_max_of_windows, **state})

    def _doc_ids(self):
        "Which document each window of the batch is from (batches of document windows), else None."
        x = self.xb[0] if len(self.xb) else None
        return x.get(DOC_IDS) if isinstance(x, Mapping) else None

    def before_batch(self):
        doc_ids = self._doc_ids()
        if doc_ids is not None:  # a batch of whole documents: at most `bs` windows through the model at once
            model = getattr(self.learn.model, "module", self.learn.model)
            if isinstance(model, HFModelWrapper):
                model.window_bs = loader_setting(self.learn, "bs", None)
        if self.use_hf_loss and len(self.yb):
            # the model's own loss is per window: each window gets its document's target
            yb = self.yb if doc_ids is None else tuple(y[doc_ids.to(y.device)] for y in self.yb)
            targets = {k: _plain(v) for k, v in self.model_targets(yb).items()}
            self.learn.xb = ({**self.xb[0], **targets},)

    def after_pred(self):
        self.model_outputs = self.pred
        self.learn.pred = self.pred_from_outputs(self.pred)
        if self._doc_ids() is not None:  # one row per document, as its targets: loss, metrics and get_preds per document
            self.learn.pred = self.combine_windows(self.learn, self.learn.pred)

    def after_loss(self):
        loss = getattr(self.model_outputs, "loss", None)
        if self.use_hf_loss and loss is not None:
            self.learn.loss_grad = loss
            self.learn.loss = loss.detach().clone()

    def after_validate(self):
        # before fastai's GatherPredsCallback (order 0) concatenates what `get_preds` gathered: per-token results of
        # batches padded to different lengths are padded to the longest, so that they make one tensor, as fastai's
        # other results do (`tta`, `Interpretation`); sequence-level results are untouched
        dl = getattr(self.learn, "dl", None)
        dl = getattr(dl, "dl", dl)  # a distributed loader wraps the blurlite one
        pad_values, side = getattr(dl, "pad_values", {}), getattr(dl, "padding_side", "right")
        for cb in self.learn.cbs:
            if isinstance(cb, GatherPredsCallback) and isinstance(getattr(cb, "inputs", None), list):
                _number_documents(cb.inputs)
            if isinstance(cb, GatherPredsCallback) and hasattr(cb, "preds"):
                # token-level targets are label ids: IGNORE_INDEX (-100) marks positions no loss or metric reads
                for name, default in (("inputs", 0), ("preds", 0), ("targets", IGNORE_INDEX)):
                    if isinstance(getattr(cb, name, None), list):
                        setattr(cb, name, pad_batches(getattr(cb, name), pad_values, side, default=default))


def _number_documents(inputs: list) -> None:
    "Make the per-batch document ids of gathered batches of windows run on across batches (they concatenate)."
    offset = 0
    for xb in inputs:
        x = xb[0] if isinstance(xb, (tuple, list)) and xb else xb
        if not isinstance(x, Mapping) or DOC_IDS not in x:
            return
        ids = x[DOC_IDS]
        x[DOC_IDS] = ids + offset
        offset += int(ids.max()) + 1 if len(ids) else 0


@patch
def generate(self: Learner, inputs, **settings):
    """Generated text for `inputs` (a prompt or a list of them), as the task's pipeline answers, e.g.
    `learn.generate("Once upon a time", max_new_tokens=50, do_sample=False)`; the settings are those of the task's
    `HFTask.generate` function. For tasks that generate text."""
    task = task_for(self.dls)
    if task.generate is None:
        raise TypeError(f"generate is for tasks that generate text (their HFTask.generate); this learner's task, "
                        f"{task.name}, does not")
    return task.generate(self, inputs, **settings)


@patch(as_prop=True)
def hf_outputs(self: Learner):
    "The Hugging Face `ModelOutput` of the last batch (None before any batch)."
    return next((cb.model_outputs for cb in self.cbs if isinstance(cb, HFModelCallback)), None)


def _encoder_blocks(base: nn.Module) -> tuple[nn.Module | None, nn.ModuleList]:
    "The transformer blocks (the `nn.ModuleList` holding the most parameters) and the module that holds them."
    lists = [(parent, m) for parent in base.modules() for m in parent.children() if isinstance(m, nn.ModuleList)]
    if not lists:
        return None, nn.ModuleList()
    return max(lists, key=lambda pm: sum(p.numel() for p in pm[1].parameters()))


def hf_splitter(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameter groups: embeddings, one group per encoder block, then the head.

    The body's parameters outside the blocks go with the embeddings (relative-position tables, norms and
    projections that the encoder holds beside its blocks, as DeBERTa-v2 and MPNet have); a module after the
    encoder that holds blocks of its own (Funnel's decoder) adds its blocks' groups. What the base model holds
    after its blocks at its own level (a final norm, a pooler) joins the head, as does everything outside the base
    model. This makes `freeze()` (train the head), `unfreeze()` and discriminative learning rates
    `slice(lo, hi)` work. For an adapter (`peft`) model the groups hold only its trainable parameters (adapters,
    head): base weights stay frozen.
    """
    hf_model = getattr(model, "hf_model", model)
    adapter_params = getattr(model, "adapter_params", None)
    if adapter_params is not None:
        keep = {id(p) for n, p in hf_model.named_parameters() if n in adapter_params}
        return [g for g in ([p for p in g if id(p) in keep] for g in _groups(model, hf_model)) if g]
    return _groups(model, hf_model)


def _groups(model: nn.Module, hf_model: nn.Module) -> list[list[nn.Parameter]]:
    "`hf_splitter`'s groups of every parameter."
    hf_model = plain_model(hf_model)  # a peft model's transformers model: the same groups as without adapters
    if getattr(hf_model.config, "is_encoder_decoder", False) and hasattr(hf_model, "get_decoder"):
        return _encoder_decoder_groups(model, hf_model)
    base = getattr(hf_model, "base_model", hf_model)
    holder, blocks = _encoder_blocks(base)
    groups, group_of = [[]], {}
    for block in blocks:
        groups.append([])
        group_of.update({id(p): len(groups) - 1 for p in block.parameters()})
    body = {id(p) for p in holder.parameters()} if holder is not None and holder is not base else set()
    seen, after_blocks, later = set(), False, {}
    for name, p in base.named_parameters():
        seen.add(id(p))
        if id(p) in group_of:
            groups[group_of[id(p)]].append(p)
            after_blocks = True
        elif id(p) in body or not after_blocks:
            groups[0].append(p)
        else:
            later.setdefault(name.split(".")[0], []).append(p)
    head = []
    for child, params in later.items():  # a module after the blocks: its own blocks are body, the rest is head
        _, own_blocks = _encoder_blocks(getattr(base, child))  # the first name of a parameter is a child module's
        in_blocks = {id(p) for p in own_blocks.parameters()}
        groups += [[p for p in b.parameters()] for b in own_blocks if any(True for _ in b.parameters())]
        head += [p for p in params if id(p) not in in_blocks]
    head += [p for p in model.parameters() if id(p) not in seen]
    return [g for g in [*groups, head] if g]


def _encoder_decoder_groups(model: nn.Module, hf_model: nn.Module) -> list[list[nn.Parameter]]:
    """`hf_splitter`'s groups of an encoder-decoder (T5, BART, `EncoderDecoderModel`, ...): embeddings (what each
    stack holds before its blocks), each encoder block, each decoder block, then the head (what each stack holds
    after its blocks, e.g. final norms, and the rest of the model: the output layer)."""
    body, blocks, head, seen = [], [], [], set()
    for stack in (hf_model.get_encoder(), hf_model.get_decoder()):
        _, stack_blocks = _encoder_blocks(stack)
        block_of = {id(p): i for i, b in enumerate(stack_blocks) for p in b.parameters()}
        groups, after_blocks = [[] for _ in stack_blocks], False
        for p in stack.parameters():  # in module order: embeddings, blocks, final norm (a shared table once)
            if id(p) in seen:
                continue
            seen.add(id(p))
            if id(p) in block_of:
                groups[block_of[id(p)]].append(p)
                after_blocks = True
            else:
                (head if after_blocks else body).append(p)
        blocks += [g for g in groups if g]
    head += [p for p in model.parameters() if id(p) not in seen]
    return [g for g in [body, *blocks, head] if g]


class HFLearner(Learner):
    """fastai's `Learner`, for blurlite: what fastai does in one process is unchanged.

    A subclass, so that fastai's own classes keep their methods for every other learner in the process. Under
    `distrib_ctx` with several processes it uses `HFDistributedTrainer` (CPU and GPU, exact validation,
    length-bucketed batches per rank), `export` writes once from rank 0, and `lr_find` refuses to run. On a CPU,
    `to_bf16()` runs bf16 autocast on CPU (fastai's drives CUDA only) and `to_fp16()` warns. `predict` lets a task
    shape its result (one row per word for token classification).
    """

    def to_distributed(self, sync_bn=True, **kwargs):
        "fastai's `to_distributed`, with blurlite's `HFDistributedTrainer`."
        self.add_cb(HFDistributedTrainer(sync_bn, **kwargs))
        if rank_distrib():
            self.remove_cb(ProgressCallback)
        return self

    def export(self, fname="export.pkl", pickle_module=pickle, pickle_protocol=2):
        "fastai's `export`; in a distributed run rank 0 writes it, from the unwrapped model, and every rank waits."
        if num_distrib() <= 1:
            return super().export(fname, pickle_module=pickle_module, pickle_protocol=pickle_protocol)
        return export_on_rank0(self, lambda f: super(HFLearner, self).export(
            f, pickle_module=pickle_module, pickle_protocol=pickle_protocol), fname)

    def to_bf16(self):
        "fastai's `to_bf16` (CUDA autocast); on a CPU, where that changes nothing, bf16 autocast on CPU (`hf_to_bf16`)."
        if learner_device(self).type == "cpu":
            return hf_to_bf16(self)
        return super().to_bf16()

    def to_fp16(self, **kwargs):
        "fastai's `to_fp16`; on a CPU it warns: CPUs autocast to bf16 only, so it would train in float32."
        if learner_device(self).type == "cpu":
            warnings.warn("to_fp16() on a CPU trains in float32 (CPU autocast runs bf16, not fp16): use "
                          "learn.to_bf16() or hf_to_bf16(learn) for mixed precision on CPU", stacklevel=2)
        return super().to_fp16(**kwargs)

    def predict(self, item, rm_type_tfms=None, with_input=False):
        "fastai's `predict`; a task may shape its result (token classification: one row per word, not per token)."
        res = super().predict(item, rm_type_tfms=rm_type_tfms, with_input=with_input)
        task = task_for(self.dls)
        if task.predict_result is None:
            return res
        head, tail = (res[:1], res[1:]) if with_input else ((), res)
        return (*head, *task.predict_result(self, item, tuple(tail)))

    def show_results(self, ds_idx=1, dl=None, max_n=9, shuffle=True, **kwargs):
        "fastai's `show_results`, unless the task shows its results itself (`HFTask.show_results`: generated text)."
        task = task_for(self.dls)
        if task.show_results is None:
            return super().show_results(ds_idx=ds_idx, dl=dl, max_n=max_n, shuffle=shuffle, **kwargs)
        return task.show_results(self, self.dls[ds_idx].new(shuffle=shuffle) if dl is None else dl, max_n=max_n,
                                 **kwargs)

    def lr_find(self, *args, **kwargs):
        "fastai's `lr_find`; raises at once inside `distrib_ctx` with several processes, where it would hang."
        if num_distrib() > 1 and any(isinstance(cb, DistributedTrainer) for cb in self.cbs):
            raise RuntimeError("lr_find does not work in a distributed run (fastai 2.8: every process saves and "
                               "reloads its own weights, and they wait on each other forever): run it in one "
                               "process (`python script.py`), then launch the training with the lr it suggests")
        return super().lr_find(*args, **kwargs)


def hf_learner(dls, hf_model: nn.Module | None = None, loss_func=None, metrics=None, cbs=None,
               splitter=hf_splitter, use_hf_loss: bool = False, peft_config=None, **learner_kwargs) -> Learner:
    """A fastai `Learner` (an `HFLearner`) for `hf_model` on blurlite `dls`, with the task's loss, metrics and
    callbacks by default, and `HFAdamW` (fastai's Adam as torch's fused AdamW) unless `opt_func` is given.

    Example: `learn = hf_learner(dls, hf_model); learn.fit_one_cycle(1, 1e-4)`. `hf_model` defaults to the model
    `HFTextDataLoaders.from_df` loaded, when it was given a checkpoint. `peft_config` (any `peft` config, e.g.
    `LoraConfig(r=8)`; its `task_type` filled in from the task) wraps the model with `peft` in place: base weights
    frozen, adapters and the task's head trained (see `blurlite.adapters`).
    """
    task = task_for(dls)
    if hf_model is None:
        hf_model = getattr(dls, "hf_model", None)
        if hf_model is None:
            raise ValueError("pass hf_model: these DataLoaders carry no model")
    task.prepare_model(dls, hf_model)  # a wrong head fails before peft changes the model
    if peft_config is not None:
        hf_model = add_adapters(hf_model, peft_config, task)
    elif has_adapters(hf_model):  # a peft model made by the caller
        check_adapter_task(hf_model, task)
    loss_func = task.default_loss(dls) if loss_func is None else loss_func
    metrics = task.default_metrics(dls) if metrics is None else metrics
    cbs = [HFModelCallback(use_hf_loss, task.pred_from_outputs, task.model_targets, task.combine_windows),
           *task.default_cbs(dls), *L(cbs)]
    learner_kwargs.setdefault("opt_func", HFAdamW)  # fastai's Adam as torch's fused AdamW
    return HFLearner(dls, HFModelWrapper(hf_model, task.non_model_keys), loss_func=loss_func, metrics=metrics,
                     cbs=cbs, splitter=splitter, **learner_kwargs)
