"""Data-parallel training with fastai's `learn.distrib_ctx()` on CPU (gloo) as well as GPU (nccl).

fastai 2.8's distributed path (`fastai/distributed.py`, line numbers: fastai 2.8.12) assumes CUDA, equal-shaped
batches on every rank and metrics that may count a few items twice. `support_distributed()` changes it as follows;
every change applies only under `distrib_ctx` with `WORLD_SIZE` > 1, and all but the first two only to blurlite's
learners (those with an `HFModelCallback`) and loaders (`HFSortedDL`):

1. CPU mode (all learners). With `WORLD_SIZE` set and no CUDA, accelerate only goes distributed in CPU mode;
   otherwise its state is `DistributedType.NO`: no DDP wrap (l.151-155), and the ranks train unsynchronised.
2. `DistributedDL._broadcast` (l.98-100, all learners) moves the indices to CUDA: "Found no NVIDIA driver" on CPU.
3. Loaders (`HFDistributedDL`). Training: rank 0's length-bucketed batches are dealt whole, batch k to rank
   k % world size (fastai slices the index list, which mixes buckets on ranks > 0). Training: the list is padded
   with its first batches so that every rank takes as many steps. Validation: no batch twice, the same batches as
   one process; the unwrapped model runs them, with no collective per batch.
4. Exact validation. At the end of a validation, the ranks add up the loss and `AvgMetric` sums, gather
   `AccumMetric` predictions, `get_preds` results (in the one-process order) and the rows of blurlite's metrics
   (`gather_from_ranks`): every rank gets the values of one process validating the whole set. fastai averages over
   a set padded to a multiple of the world size instead (57/102 rather than 57/101).
5. Per-token tensors gathered during training are padded to the same length on every rank first (fastai's
   `all_gather` needs equal shapes: gloo aborts, nccl hangs).
6. Saving. `save_pretrained` and `export` write once, from rank 0, from the unwrapped model, to a temporary file
   renamed into place, and every rank returns (or raises) once it is written. fastai's `export` inside the context
   fails on the `Accelerator` and leaves a corrupt file.
7. `lr_find` inside the context (it hangs in fastai 2.8: each rank saves and reloads its own weights) raises at
   once, saying to run it in one process. `CSVLogger` writes from rank 0 only.

Example (run with `torchrun --nproc_per_node 2 train.py`; the same script runs in one process under `python`):

    learn = hf_learner(dls)
    with learn.distrib_ctx():
        learn.fit_one_cycle(1, 1e-4)
    learn.save_pretrained("model")
"""
from __future__ import annotations

import functools
import math
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, pad_across_processes
from fastai.callback.core import GatherPredsCallback
from fastai.callback.progress import CSVLogger
from fastai.distributed import DistributedDL, DistributedTrainer
from fastai.learner import AvgLoss, AvgMetric, Learner
from fastai.metrics import AccumMetric
from fastai.torch_core import num_distrib, rank_distrib, retain_type, to_concat, to_detach
from fastcore.foundation import L

from .data import IGNORE_INDEX, HFSortedDL

__all__ = ["support_distributed", "needs_cpu_mode", "HFDistributedDL", "gather_rows", "all_reduce_sums"]

_fastai_broadcast = DistributedDL._broadcast
_fastai_trainer_init = DistributedTrainer.__init__
_fastai_wrap_dl = DistributedTrainer._wrap_dl
_fastai_before_train = DistributedTrainer.before_train
_fastai_before_validate = DistributedTrainer.before_validate
_fastai_after_validate = getattr(DistributedTrainer, "after_validate", None)  # not defined in fastai 2.8
_fastai_before_fit = DistributedTrainer.before_fit


def needs_cpu_mode(environ: Mapping[str, str] | None = None, cuda_available: bool | None = None) -> bool:
    "True when this process is one of several (`WORLD_SIZE` > 1) and has no CUDA: accelerate must run on CPU."
    environ = os.environ if environ is None else environ
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    return int(environ.get("WORLD_SIZE", 0) or 0) > 1 and not cuda_available


def _use_cpu_mode() -> None:
    """Make the next `Accelerator` distributed on CPU (gloo), when this process needs it.

    The env var, not `Accelerator(cpu=True)`: `rank0_first` creates a bare `Accelerator`, and accelerate's state
    is a process-wide singleton. A state already created without CPU mode (by `rank0_first` before this was
    installed) is `DistributedType.NO`, which never wraps the model in DDP, so it is dropped and created again;
    the process group it started (torch's default backend, gloo on CPU) is kept and reused.
    """
    if not needs_cpu_mode():
        return
    os.environ["ACCELERATE_USE_CPU"] = "1"
    if PartialState._shared_state.get("distributed_type") == DistributedType.NO:
        AcceleratorState._reset_state(reset_partial_state=True)


def _is_blurlite(learn) -> bool:
    from .learner import HFModelCallback

    return learn is not None and any(isinstance(cb, HFModelCallback) for cb in learn.cbs)


def _distributed() -> bool:
    "Several processes, and a process group to talk through."
    return num_distrib() > 1 and dist.is_initialized()


# ---------------------------------------------------------------------------------------------- collectives
def _broadcast(self, t, rank):
    "Rank `rank`'s list `t` on every rank: fastai's CUDA tensor broadcast on nccl, a pickled list otherwise."
    if dist.get_backend() == "nccl":
        return _fastai_broadcast(self, t, rank)
    objects = [list(t)]
    dist.broadcast_object_list(objects, src=rank)
    return objects[0]


def _all_gather(obj) -> list:
    "Every rank's `obj` (pickled), in rank order."
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_rows(rows: list) -> list:
    """Every rank's `rows`, rank 0's first; `rows` as they are outside a distributed run.

    For metrics that keep Python rows (one per item): call it in `gather_from_ranks`, which blurlite calls on
    every rank at the end of a distributed validation (in the order of the learner's metrics, so that every rank
    makes the same collective calls).
    """
    if not _distributed():
        return list(rows)
    return [row for part in _all_gather(list(rows)) for row in part]


def all_reduce_sums(*values: float) -> list[float]:
    "The sums over ranks of `values` (float64); `values` as they are outside a distributed run."
    if not _distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


# --------------------------------------------------------------------------------------------------- loaders
def _pad_value(key, x: torch.Tensor, pad_values: dict) -> int:
    "What pads `x` (a batch field, or the value of `key` in a dict batch): as the loader pads, else -100 / 0."
    if key is not None and key in pad_values:
        return pad_values[key]
    pad_value = getattr(x, "pad_value", None)  # `TensorTokenLabels`
    if pad_value is not None:
        return pad_value
    return 0 if x.is_floating_point() else IGNORE_INDEX


def _pad_tokens_across_ranks(b, pad_values: dict, pad_first: bool, key=None):
    "`b` with every tensor of 2+ dims padded on dim 1 (tokens) to the longest across ranks; same order on all ranks."
    if isinstance(b, Mapping):
        return type(b)({k: _pad_tokens_across_ranks(v, pad_values, pad_first, k) for k, v in b.items()})
    if isinstance(b, (list, tuple, L)):
        return type(b)([_pad_tokens_across_ranks(v, pad_values, pad_first) for v in b])
    if not isinstance(b, torch.Tensor) or b.ndim < 2:
        return b
    padded = pad_across_processes(b, dim=1, pad_index=_pad_value(key, b, pad_values), pad_first=pad_first)
    return retain_type(padded, b)


class HFDistributedDL(DistributedDL):
    """fastai's `DistributedDL` for an `HFSortedDL`: rank 0's batches dealt whole to the ranks, batch k to rank
    k % world size, so every rank's batches stay length-bucketed.

    `validating` (set by `DistributedTrainer` before each training or validation) picks how:
    - training: the batch list is padded with its first batches so that every rank runs as many steps (DDP
      synchronises every step);
    - validation: no batch twice, and the batches are those of one process (so even a per-batch token mean, such
      as the token-level loss, adds up to the same total); `to_detach` keeps results local, and the ranks combine
      them once, at the end of the validation. With fewer batches than processes, the items are cut into one batch
      per process instead.
    """
    validating = False

    def _deal(self, idxs: list) -> list[list]:
        bs = self.dl.bs or 1
        batches = [idxs[i:i + bs] for i in range(0, len(idxs), bs)]
        if self.drop_last and batches and len(batches[-1]) < bs:
            batches = batches[:-1]
        if not self.validating:
            per_rank = math.ceil(len(batches) / self.world_size)
            return batches + (batches * self.world_size)[:per_rank * self.world_size - len(batches)]
        if len(batches) < self.world_size:
            if len(idxs) < self.world_size:
                raise ValueError(f"cannot validate {len(idxs)} items on {self.world_size} processes: every process "
                                 "needs at least one; validate on more items or in one process")
            cuts = [round(i * len(idxs) / self.world_size) for i in range(self.world_size + 1)]
            batches = [idxs[a:b] for a, b in zip(cuts, cuts[1:])]
        return batches

    def get_idxs(self):
        self._batches = None
        if self.dl.fake_l.num_workers and not self.validating:  # workers split the index list themselves: fastai's
            return super().get_idxs()
        idxs = self._broadcast(list(self.dl.get_idxs()), 0)  # rank 0's order on every rank
        self.n = len(idxs)
        batches = self._deal(idxs)
        self.batch_sizes = [len(b) for b in batches]
        self._batches = batches[self.rank::self.world_size]
        return [i for b in self._batches for i in b]

    def __len__(self):
        if self.validating:
            n, bs = self.dl.n, self.dl.bs or 1
            n_batches = max(n // bs if self.drop_last else math.ceil(n / bs), min(n, self.world_size))
            return len(range(self.rank, n_batches, self.world_size))
        return super().__len__()

    def create_batches(self, samps):
        if self._batches is None:
            yield from self.dl.create_batches(samps)
            return
        dl = self.dl
        if dl.dataset is not None:
            dl.it = iter(dl.dataset)
        for idxs in self._batches:  # as dealt, not re-chunked: a short batch stays a batch of its own
            yield dl.do_batch([o for o in map(dl.do_item, idxs) if o is not None])

    def to_detach(self, b, cpu=True, gather=True):
        if self.validating:  # gathered once at the end of validation, in item order (`_combine_validation`)
            return to_detach(b, cpu, gather=False)
        if gather:
            b = _pad_tokens_across_ranks(b, self.dl.pad_values, self.dl.padding_side == "left")
        return to_detach(b, cpu, gather)


# ------------------------------------------------------------------------------------------- exact validation
def _rows(x) -> list:
    "A batch-first result (tensor, or fastai's `L` of ragged rows) as a list of rows (each with a batch dim of 1)."
    if isinstance(x, torch.Tensor):
        return list(x.split(1)) if x.ndim else [x]
    return [r[None] if isinstance(r, torch.Tensor) else r for r in x]


def _merge_ranks(parts: list, batch_sizes: list[int]):
    """One result from each rank's, rows in the one-process order: batch k came from rank k % world size
    (`HFDistributedDL`); concatenated as fastai's `to_concat` does."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, Mapping):
        return type(first)({k: _merge_ranks([p[k] for p in parts], batch_sizes) for k in first})
    if isinstance(first, tuple) or (isinstance(first, list) and not isinstance(first, L)):
        return type(first)(_merge_ranks([p[i] for p in parts], batch_sizes) for i in range(len(first)))
    if isinstance(first, torch.Tensor) and first.ndim == 0:
        return first
    rows, taken, merged = [_rows(p) for p in parts], [0] * len(parts), []
    for k, size in enumerate(batch_sizes):
        rank = k % len(parts)
        merged += rows[rank][taken[rank]:taken[rank] + size]
        taken[rank] += size
    return to_concat(merged) if merged else first


def _combine_validation(learn) -> None:
    """Make this rank's validation results those of the whole validation set (every rank does the same calls)."""
    recorder = getattr(learn, "recorder", None)
    metrics = list(recorder._valid_mets) if recorder is not None else []
    averaged = [m for m in metrics if isinstance(m, (AvgLoss, AvgMetric))]
    sums = all_reduce_sums(*[v for m in averaged for v in (m.total, m.count)])
    for i, m in enumerate(averaged):
        m.total, m.count = sums[2 * i], sums[2 * i + 1]
    unknown = []
    for m in metrics:
        if isinstance(m, AccumMetric):  # order does not matter to a metric: rank after rank
            for name in ("preds", "targs"):
                parts = _all_gather(torch.cat(getattr(m, name)) if getattr(m, name) else None)
                setattr(m, name, [p for p in parts if p is not None])
        elif hasattr(m, "gather_from_ranks"):
            m.gather_from_ranks()
        elif not isinstance(m, (AvgLoss, AvgMetric)):
            unknown.append(getattr(m, "name", type(m).__name__))
    if unknown and rank_distrib() == 0:
        warnings.warn(f"metrics {unknown} are computed on rank 0's share of the validation set only: give them a "
                      "`gather_from_ranks()` method (see blurlite.distributed.gather_rows)", stacklevel=2)
    batch_sizes = learn.dl.batch_sizes
    for cb in learn.cbs:
        if isinstance(cb, GatherPredsCallback) and hasattr(cb, "preds"):
            for name, flag in (("inputs", "with_input"), ("preds", "with_preds"), ("targets", "with_targs"),
                               ("losses", "with_loss")):
                if getattr(cb, flag):
                    setattr(cb, name, _merge_ranks(_all_gather(getattr(cb, name)), batch_sizes))


# -------------------------------------------------------------------------------------------- the trainer
@functools.wraps(_fastai_trainer_init)
def _distributed_trainer_init(self, *args, **kwargs):
    "fastai's `DistributedTrainer.__init__` (l.146), in CPU mode when the process has no CUDA."
    _use_cpu_mode()
    _fastai_trainer_init(self, *args, **kwargs)


def _wrap_dl(self, dl):
    if isinstance(dl, HFSortedDL) and _is_blurlite(self.learn):
        return HFDistributedDL(dl, device=self.learn.model.device)
    return _fastai_wrap_dl(self, dl)


def _before_fit(self):
    _fastai_before_fit(self)
    if rank_distrib() and _is_blurlite(self.learn):  # one history.csv, from rank 0 (`run` is reset after fit)
        for cb in self.learn.cbs:
            if isinstance(cb, CSVLogger):
                cb.run = False


def _before_train(self):
    _fastai_before_train(self)
    if isinstance(self.learn.dl, HFDistributedDL):
        self.learn.dl.validating = False


def _before_validate(self):
    _fastai_before_validate(self)
    self._exact = isinstance(self.learn.dl, HFDistributedDL)
    if self._exact:
        self.learn.dl.validating = True
        # ranks validate different numbers of batches: the DDP wrapper's forward may call collectives
        self._ddp_model = self.learn.model
        self.learn.model = getattr(self.learn.model, "module", self.learn.model)


def _after_validate(self):
    if _fastai_after_validate is not None:
        _fastai_after_validate(self)
    if getattr(self, "_exact", False):
        self.learn.model, self._exact = self._ddp_model, False
        del self._ddp_model
        _combine_validation(self.learn)


# ------------------------------------------------------------------------------------------ learner methods
def _run_on_rank0(write, what: str):
    "Run `write()` on rank 0 only; every rank returns once it is done, or raises if it failed."
    if not _distributed():
        return None if rank_distrib() else write()
    error, result = None, None
    if dist.get_rank() == 0:
        try:
            result = write()
        except Exception as e:  # tell the other ranks, so that they raise instead of waiting forever
            error = e
    outcome = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(outcome, src=0)  # also the barrier: rank 0 has finished writing
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise RuntimeError(f"{what} failed on rank 0 ({outcome[0]}); see rank 0's traceback")
    return result


def _rank0_save_pretrained(save_pretrained):
    "`save_pretrained` that writes from rank 0 only; every rank returns once the directory is complete."
    @functools.wraps(save_pretrained)
    def wrapper(self: Learner, path, *args, **kwargs):
        if num_distrib() <= 1:
            return save_pretrained(self, path, *args, **kwargs)
        _run_on_rank0(lambda: save_pretrained(self, path, *args, **kwargs), "save_pretrained")
        return Path(path)
    wrapper.rank0_only = True
    return wrapper


def _safe_export(export):
    """fastai's `export` for a blurlite learner in a distributed run: rank 0 writes, without the distributed
    wrappers (the `Accelerator` cannot be pickled), to a temporary file renamed into place; every rank waits."""
    @functools.wraps(export)
    def wrapper(self: Learner, fname="export.pkl", *args, **kwargs):
        if num_distrib() <= 1 or not _is_blurlite(self):
            return export(self, fname, *args, **kwargs)
        trainers = [cb for cb in self.cbs if isinstance(cb, DistributedTrainer)]

        def write():
            target = Path(self.path) / fname
            model, loaders = self.model, list(self.dls.loaders)
            for cb in trainers:
                self.remove_cb(cb)
            self.model = getattr(model, "module", model)
            self.dls.loaders = [getattr(dl, "dl", dl) if isinstance(dl, DistributedDL) else dl for dl in loaders]
            tmp = None
            try:
                handle, tmp = tempfile.mkstemp(dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp")
                os.close(handle)
                export(self, tmp, *args, **kwargs)  # `self.path / tmp` is `tmp`: it is absolute
                os.replace(tmp, target)
            finally:
                if tmp is not None and os.path.exists(tmp):
                    os.remove(tmp)
                self.model, self.dls.loaders = model, loaders
                for cb in trainers:
                    self.add_cb(cb)

        _run_on_rank0(write, "export")
    wrapper.rank0_only = True
    return wrapper


def _no_distributed_lr_find(lr_find):
    @functools.wraps(lr_find)
    def wrapper(self: Learner, *args, **kwargs):
        if num_distrib() > 1 and _is_blurlite(self) and any(isinstance(cb, DistributedTrainer) for cb in self.cbs):
            raise RuntimeError("lr_find does not work in a distributed run (fastai 2.8: every process saves and "
                               "reloads its own weights, and they wait on each other forever): run it in one "
                               "process (`python script.py`), then launch the training with the lr it suggests")
        return lr_find(self, *args, **kwargs)
    wrapper.distributed_checked = True
    return wrapper


def support_distributed() -> None:
    """Install blurlite's changes to fastai's distributed training (idempotent); see the module docstring.

    Single-process runs are unchanged: every change applies only under `distrib_ctx` with `WORLD_SIZE` > 1;
    all but the CPU mode and the backend-neutral broadcast (without which any learner fails on CPU) apply only to
    blurlite's learners and loaders.
    """
    from fastai.callback.schedule import lr_find  # noqa: F401  (defines Learner.lr_find)

    from . import serialization  # noqa: F401  (defines Learner.save_pretrained; imported here, as it imports us)

    DistributedTrainer.__init__ = _distributed_trainer_init
    DistributedTrainer._wrap_dl = _wrap_dl
    DistributedTrainer.before_train = _before_train
    DistributedTrainer.before_validate = _before_validate
    DistributedTrainer.after_validate = _after_validate
    DistributedDL._broadcast = _broadcast
    DistributedTrainer.before_fit = _before_fit
    if not getattr(Learner.save_pretrained, "rank0_only", False):
        Learner.save_pretrained = _rank0_save_pretrained(Learner.save_pretrained)
    if not getattr(Learner.export, "rank0_only", False):
        Learner.export = _safe_export(Learner.export)
    if not getattr(Learner.lr_find, "distributed_checked", False):
        Learner.lr_find = _no_distributed_lr_find(Learner.lr_find)
