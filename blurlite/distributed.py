"""Data-parallel training of blurlite learners with fastai's `learn.distrib_ctx()`, on CPU (gloo) and GPU (nccl).

`HFLearner.to_distributed` adds `HFDistributedTrainer`, a subclass of fastai's `DistributedTrainer` used by blurlite
learners only (other learners in the process keep fastai's). What it changes, and why (fastai 2.8 assumes CUDA,
equal batch shapes on every rank, and metrics that may count an item twice):

- CPU mode when the process has no CUDA (accelerate otherwise does not wrap the model in DDP), and a
  backend-neutral index broadcast (fastai's moves it to CUDA).
- `HFDistributedDL`: rank 0's length-bucketed batches are dealt whole to the ranks; validation runs the batches of
  one process, and its loss, metrics and `get_preds` results are combined exactly at its end.
- Per-token tensors are padded to the same length on every rank before fastai gathers them.
- `CSVLogger` writes from rank 0 only; `export`/`save_pretrained` write once, from rank 0 (`export_on_rank0`).

Example (`torchrun --nproc_per_node 2 train.py`; the same script runs in one process under `python`):

    learn = hf_learner(dls)
    with learn.distrib_ctx():
        learn.fit_one_cycle(1, 1e-4)
    learn.save_pretrained("model")
"""
from __future__ import annotations

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
from fastai.learner import AvgLoss, AvgMetric
from fastai.metrics import AccumMetric
from fastai.torch_core import rank_distrib, retain_type, to_concat, to_detach
from fastcore.foundation import L

from .data import IGNORE_INDEX, HFSortedDL, pad_batches
from .ranks import all_gather, all_reduce_sums, broadcast_list, run_on_rank0

__all__ = ["HFDistributedTrainer", "HFDistributedDL", "needs_cpu_mode", "export_on_rank0"]


def needs_cpu_mode(environ: Mapping[str, str] | None = None, cuda_available: bool | None = None) -> bool:
    "True when this process is one of several (`WORLD_SIZE` > 1) and has no CUDA: accelerate must run on CPU."
    environ = os.environ if environ is None else environ
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    return int(environ.get("WORLD_SIZE", 0) or 0) > 1 and not cuda_available


def _use_cpu_mode() -> None:
    """Make the next `Accelerator` distributed on CPU (gloo), when this process needs it.

    The env var, not `Accelerator(cpu=True)`: accelerate's state is a process-wide singleton, and a state made
    earlier without CPU mode (e.g. by fastai's `rank0_first`) is `DistributedType.NO`, which never wraps the model
    in DDP: it is dropped and made again (the process group it started is kept).
    """
    if not needs_cpu_mode():
        return
    os.environ["ACCELERATE_USE_CPU"] = "1"
    if PartialState._shared_state.get("distributed_type") == DistributedType.NO:
        AcceleratorState._reset_state(reset_partial_state=True)


def _broadcast(self, t, rank):
    "Rank `rank`'s list `t` on every rank: fastai's CUDA tensor broadcast on nccl, a pickled list otherwise."
    if dist.get_backend() == "nccl":
        return DistributedDL._broadcast(self, t, rank)
    return broadcast_list(t, rank)


class _AnyBackendDL(DistributedDL):
    "fastai's `DistributedDL` with a broadcast that also works on gloo (CPU): for other loaders of a blurlite learner."
    _broadcast = _broadcast


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


class HFDistributedDL(_AnyBackendDL):
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


def _merge_ranks(parts: list, batch_sizes: list[int], pad: dict, key=None):
    """One result from each rank's, rows in the one-process order: batch k came from rank k % world size
    (`HFDistributedDL`); per-token rows padded to one length (`pad`: `pad_batches` arguments) and concatenated as
    fastai's `to_concat` does."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, Mapping):
        return type(first)({k: _merge_ranks([p[k] for p in parts], batch_sizes, pad, k) for k in first})
    if isinstance(first, tuple) or (isinstance(first, list) and not isinstance(first, L)):
        return type(first)(_merge_ranks([p[i] for p in parts], batch_sizes, pad) for i in range(len(first)))
    if isinstance(first, torch.Tensor) and first.ndim == 0:
        return first
    rows, taken, merged = [_rows(p) for p in parts], [0] * len(parts), []
    for k, size in enumerate(batch_sizes):
        rank = k % len(parts)
        merged += rows[rank][taken[rank]:taken[rank] + size]
        taken[rank] += size
    return to_concat(pad_batches(merged, key=key, **pad)) if merged else first


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
                parts = all_gather(torch.cat(getattr(m, name)) if getattr(m, name) else None)
                setattr(m, name, [p for p in parts if p is not None])
        elif hasattr(m, "gather_from_ranks"):
            m.gather_from_ranks()
        elif not isinstance(m, (AvgLoss, AvgMetric)):
            unknown.append(getattr(m, "name", type(m).__name__))
    if unknown and rank_distrib() == 0:
        warnings.warn(f"metrics {unknown} are computed on rank 0's share of the validation set only: give them a "
                      "`gather_from_ranks()` method (see blurlite.ranks.gather_rows)", stacklevel=2)
    batch_sizes, dl = learn.dl.batch_sizes, learn.dl.dl
    for cb in learn.cbs:
        if isinstance(cb, GatherPredsCallback) and hasattr(cb, "preds"):
            for name, flag, default in (("inputs", "with_input", 0), ("preds", "with_preds", 0),
                                        ("targets", "with_targs", IGNORE_INDEX), ("losses", "with_loss", 0)):
                if getattr(cb, flag):
                    pad = dict(pad_values=dl.pad_values, padding_side=dl.padding_side, default=default)
                    setattr(cb, name, _merge_ranks(all_gather(getattr(cb, name)), batch_sizes, pad))


# -------------------------------------------------------------------------------------------- the trainer
class HFDistributedTrainer(DistributedTrainer):
    "fastai's `DistributedTrainer` for blurlite learners: CPU mode, `HFDistributedDL` loaders, exact validation."

    def __init__(self, sync_bn=True, **kwargs):
        _use_cpu_mode()
        super().__init__(sync_bn, **kwargs)

    def _wrap_dl(self, dl):
        if isinstance(dl, DistributedDL):
            return dl
        cls = HFDistributedDL if isinstance(dl, HFSortedDL) else _AnyBackendDL
        return cls(dl, device=self.learn.model.device)

    def before_fit(self):
        super().before_fit()
        if rank_distrib():  # one history.csv, from rank 0 (`run` is reset after fit)
            for cb in self.learn.cbs:
                if isinstance(cb, CSVLogger):
                    cb.run = False

    def before_train(self):
        super().before_train()
        if isinstance(self.learn.dl, HFDistributedDL):
            self.learn.dl.validating = False

    def before_validate(self):
        super().before_validate()
        self._exact = isinstance(self.learn.dl, HFDistributedDL)
        if self._exact:
            self.learn.dl.validating = True
            # ranks validate different numbers of batches: the DDP wrapper's forward may call collectives
            self._ddp_model = self.learn.model
            self.learn.model = getattr(self.learn.model, "module", self.learn.model)

    def after_validate(self):
        if getattr(self, "_exact", False):
            self.learn.model, self._exact = self._ddp_model, False
            del self._ddp_model
            _combine_validation(self.learn)


def export_on_rank0(learn, export, fname="export.pkl"):
    """Run `export(file)` (fastai's `Learner.export`) on rank 0, without the distributed wrappers (the `Accelerator`
    cannot be pickled), to a temporary file renamed into `learn.path / fname`; every rank returns once it is written."""
    trainers = [cb for cb in learn.cbs if isinstance(cb, DistributedTrainer)]

    def write():
        target = Path(learn.path) / fname
        model, loaders = learn.model, list(learn.dls.loaders)
        for cb in trainers:
            learn.remove_cb(cb)
        learn.model = getattr(model, "module", model)
        learn.dls.loaders = [getattr(dl, "dl", dl) if isinstance(dl, DistributedDL) else dl for dl in loaders]
        tmp = None
        try:
            handle, tmp = tempfile.mkstemp(dir=target.resolve().parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(handle)
            export(tmp)  # `learn.path / tmp` is `tmp`: it is absolute
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; fastai's export would not
            os.replace(tmp, target)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)
            learn.model, learn.dls.loaders = model, loaders
            for cb in trainers:
                learn.add_cb(cb)

    run_on_rank0(write, "export")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
