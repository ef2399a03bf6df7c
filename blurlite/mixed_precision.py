"""Faster CPU training and inference: bf16 mixed precision on CPU, and int8 dynamic quantization for inference.

fastai's `learn.to_bf16()` drives CUDA autocast only: on a CPU it changes nothing. `hf_to_bf16(learn)` picks what
works on the learner's device: `CPUMixedPrecision` on CPU, fastai's `MixedPrecision` on CUDA.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import Learner
from fastai.torch_core import to_float
from fastcore.basics import patch_to
from torch import nn

__all__ = ["BF16EmulationWarning", "cpu_bf16_support", "learner_device", "CPUMixedPrecision", "hf_to_bf16", "hf_to_fp32",
           "quantize_learner", "QuantizedInference"]

# CPU flags of instructions that compute on bf16 directly: x86 AVX512-BF16 and AMX, aarch64's BF16 extension
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


class BF16EmulationWarning(UserWarning):
    "bf16 on a CPU without native bf16 instructions: it is emulated, usually slower than float32."


def _cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    "The CPU feature flags Linux reports (`flags` on x86, `Features` on ARM); empty where there is no cpuinfo."
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_bf16_support(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[bool, str]:
    """Whether this CPU runs bf16 matrix products natively, and the evidence, e.g. `(True, "avx512_bf16 in ...")`.

    Reads the CPU flags (Linux) and falls back on oneDNN's own check elsewhere. A CPU without them still runs
    bf16, but by converting to float32 and back: slower than plain float32 training.
    """
    capability = torch.backends.cpu.get_cpu_capability()  # e.g. "AVX512": says nothing about bf16 by itself
    flags = _cpu_flags(cpuinfo)
    native = [f for f in _NATIVE_BF16_FLAGS if f in flags]
    if native:
        return True, f"{', '.join(native)} in {cpuinfo} (torch CPU capability {capability})"
    if flags:
        return False, f"no {', '.join(_NATIVE_BF16_FLAGS)} flag in {cpuinfo} (torch CPU capability {capability})"
    try:  # no cpuinfo (macOS, Windows): ask oneDNN, which looks for the same instructions
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False, f"cannot tell: no {cpuinfo} and no oneDNN check (torch CPU capability {capability})"
    return native, f"oneDNN reports {'native' if native else 'no native'} bf16 (torch CPU capability {capability})"


def warn_if_bf16_emulated() -> bool:
    "Warn (`BF16EmulationWarning`) when this CPU has no native bf16; returns whether it has."
    native, evidence = cpu_bf16_support()
    if not native:
        warnings.warn(f"bf16 mixed precision on this CPU will be emulated and is likely slower than float32 "
                      f"({evidence}); train in float32 (hf_to_fp32(learn)) or on a CPU with AVX512-BF16 or AMX",
                      BF16EmulationWarning, stacklevel=3)
    return native


def learner_device(learn: Learner) -> torch.device:
    "The device fastai will train on: the `DataLoaders`' (fastai moves the model there), else the model's."
    device = getattr(learn.dls, "device", None)
    if device is None:
        device = next(iter(learn.model.parameters()), torch.empty(0)).device
    return torch.device(device)


class CPUMixedPrecision(Callback):
    """bf16 mixed precision on CPU: the model's forward pass runs under `torch.autocast("cpu", torch.bfloat16)`.

    Weights, gradients and the optimizer stay float32, and predictions are cast back to float32 before fastai's
    loss and metrics, so these are float32 too; bf16 has float32's range, so no loss scaling. A model's own loss
    (`use_hf_loss=True`) is computed in the forward pass, under autocast, and handed on as float32.
    Prefer `hf_to_bf16(learn)`, which also covers CUDA. Warns (`BF16EmulationWarning`) on a CPU without native bf16.
    """
    order = 10  # after HFModelCallback (-5) has swapped the ModelOutput for its logits; as fastai's MixedPrecision

    def __init__(self, warn: bool = True):
        self.autocast = None
        if warn:
            warn_if_bf16_emulated()

    def __getstate__(self):
        return {**self.__dict__, "autocast": None}  # a context manager is no part of a saved learner

    def before_fit(self):
        device = learner_device(self.learn)
        if device.type != "cpu":
            raise RuntimeError(f"CPUMixedPrecision autocasts on CPU, but this learner runs on {device}: "
                               "call hf_to_bf16(learn) instead, which uses fastai's MixedPrecision there")

    def before_batch(self):
        self._stop_autocast()
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_pred(self):
        # autocast covers the forward pass only: backward follows the forward's dtypes by itself
        self._stop_autocast()
        self.learn.pred = to_float(self.pred)

    def after_loss(self):
        loss = getattr(self.learn, "loss_grad", None)  # unset on batches without targets (predict)
        if isinstance(loss, torch.Tensor) and loss.is_floating_point() and loss.dtype != torch.float32:
            self.learn.loss_grad = loss.float()  # a model's own loss, computed under autocast
            self.learn.loss = self.learn.loss_grad.detach().clone()

    # the forward pass may not reach after_pred (a cancelled batch, an error): never leave autocast on
    def after_cancel_batch(self): self._stop_autocast()
    def after_batch(self): self._stop_autocast()
    def after_fit(self): self._stop_autocast()

    def _stop_autocast(self):
        if self.autocast is not None:
            self.autocast.__exit__(None, None, None)
            self.autocast = None


def hf_to_fp32(learn: Learner) -> Learner:
    "Train and predict in float32 again: removes `CPUMixedPrecision` and fastai's `MixedPrecision`; returns `learn`."
    return learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, (CPUMixedPrecision, MixedPrecision))])


def hf_to_bf16(learn: Learner) -> Learner:
    """Use bf16 mixed precision on the learner's device; returns `learn`, like fastai's `to_bf16`.

    CPU: `CPUMixedPrecision` (autocast on CPU), with a `BF16EmulationWarning` when the CPU has no native bf16.
    CUDA: fastai's `MixedPrecision(amp_mode="bf16")`. Example: `learn = hf_learner(dls).hf_to_bf16()` or
    `hf_to_bf16(learn)`. Call it again after moving the learner to another device.
    """
    hf_to_fp32(learn)
    device = learner_device(learn)
    if device.type == "cpu":
        return learn.add_cb(CPUMixedPrecision())
    if device.type == "cuda":
        return learn.add_cb(MixedPrecision(amp_mode="bf16"))  # fastai's: raises on a GPU without bf16
    raise ValueError(f"no bf16 mixed precision for device {device}: train on CPU or CUDA, or in float32")


# also methods, as fastai's `learn.to_bf16()`/`learn.to_fp32()`: `hf_learner(dls).hf_to_bf16()`
patch_to(Learner)(hf_to_fp32)
patch_to(Learner)(hf_to_bf16)


class QuantizedInference(Callback):
    "Stops `fit` on a learner whose model is int8-quantized: quantized weights have no gradients."

    def before_train(self):  # not before_fit: get_preds and validate send that event too
        raise RuntimeError("this learner's model is int8-quantized for inference and cannot be trained: "
                           "fine-tune the float32 learner, then call quantize_learner on it again")


def _check_quantized_engine() -> None:
    engine = torch.backends.quantized.engine
    if engine in (None, "none") or not torch.backends.quantized.supported_engines:
        raise RuntimeError("this torch build has no quantized CPU engine (torch.backends.quantized.engine is "
                           f"{engine!r}); use float32 or bf16 inference instead")


def quantize_learner(learn: Learner, dtype: torch.dtype = torch.qint8) -> Learner:
    """A copy of `learn` for CPU inference whose `nn.Linear` layers run in int8; `learn` is left unchanged.

    Dynamic quantization: weights are quantized once, activations batch by batch; embeddings and layer norms stay
    float32. The copy shares `learn.dls`; `predict`, `hf_predict`, `get_preds`, `validate` and `export` work,
    `fit` raises. Check its predictions against `learn`'s on your data: agreement is usually high, not exact.
    Example: `qlearn = quantize_learner(learn); qlearn.hf_predict(texts)`.
    """
    device = learner_device(learn)
    if device.type != "cpu":
        raise ValueError(f"int8 dynamic quantization runs on CPU, but this learner is on {device}: "
                         "call learn.dls.cpu() and learn.model.cpu() first")
    _check_quantized_engine()
    model = copy.deepcopy(learn.model).cpu().eval()
    with warnings.catch_warnings():
        # torch.ao's eager quantization works but warns that it moves to torchao; nothing for the user to do here
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated", category=UserWarning)
        quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=dtype, inplace=True)
    # copy everything else (callbacks, loss, metrics) while keeping the data and swapping in the quantized model
    memo = {id(learn.dls): learn.dls, id(learn.model): quantized, id(learn.opt): None}
    qlearn = copy.deepcopy(learn, memo)
    qlearn.opt = None
    qlearn.remove_cbs([cb for cb in qlearn.cbs if isinstance(cb, (CPUMixedPrecision, MixedPrecision))])
    return qlearn.add_cb(QuantizedInference())
