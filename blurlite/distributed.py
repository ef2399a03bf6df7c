"""Data-parallel training with fastai's `learn.distrib_ctx()` on CPU (gloo) as well as GPU (nccl).

fastai 2.8's distributed path (`fastai/distributed.py`) assumes CUDA and equal-shaped batches on every rank.
`support_distributed()` fixes the places where that breaks a blurlite learner (line numbers: fastai 2.8.12):

1. CPU mode. With `WORLD_SIZE` set and no CUDA, accelerate only goes distributed in CPU mode; otherwise its
   state is `DistributedType.NO`: no DDP wrap (l.151-155), and the ranks train unsynchronised on their shards.
2. `DistributedDL._broadcast` (l.98-100) moves the indices to CUDA: "Found no NVIDIA driver" on CPU.
3. `DistributedDL._to_detach` (l.104) gathers with `all_gather`, which needs equal shapes on every rank; blurlite
   pads each batch to its own longest row, so per-token tensors differ in length (gloo aborts, nccl hangs).
4. `Learner.save_pretrained` must write from rank 0 only, the others waiting until it is written (as fastai's
   `Learner.save` does).

Metrics that accumulate Python rows per item (not fastai's `AvgMetric`/`AccumMetric`, which gather) see only
their rank's shard; `gather_rows` gives them every rank's rows.

Example (run with `torchrun --nproc_per_node 2 train.py`; the same script runs in one process under `python`):

    learn = hf_learner(dls)
    with learn.distrib_ctx():
        learn.fit_one_cycle(1, 1e-4)
    learn.save_pretrained("model")
"""
from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, pad_across_processes
from fastai.distributed import DistributedDL, DistributedTrainer
from fastai.learner import Learner
from fastai.torch_core import num_distrib, rank_distrib, retain_type, to_detach
from fastcore.foundation import L

from .data import IGNORE_INDEX, HFSortedDL

__all__ = ["support_distributed", "needs_cpu_mode", "distributed_item_count", "gather_rows"]

_fastai_broadcast = DistributedDL._broadcast
_fastai_trainer_init = DistributedTrainer.__init__


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


@functools.wraps(_fastai_trainer_init)
def _distributed_trainer_init(self, *args, **kwargs):
    "fastai's `DistributedTrainer.__init__` (l.146), in CPU mode when the process has no CUDA."
    _use_cpu_mode()
    _fastai_trainer_init(self, *args, **kwargs)


def _broadcast(self, t, rank):
    "Rank `rank`'s list `t` on every rank: fastai's CUDA tensor broadcast on nccl, a pickled list otherwise."
    if dist.get_backend() == "nccl":
        return _fastai_broadcast(self, t, rank)
    objects = [list(t)]
    dist.broadcast_object_list(objects, src=rank)
    return objects[0]


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


def _to_detach(self, b, cpu=True, gather=True):
    "fastai's `to_detach` (l.104); blurlite batches are first padded to the same length on every rank."
    if gather and num_distrib() > 1 and isinstance(self.dl, HFSortedDL):
        b = _pad_tokens_across_ranks(b, self.dl.pad_values, self.dl.padding_side == "left")
    return to_detach(b, cpu, gather)


def distributed_item_count(dl) -> int | None:
    "The number of items `dl` shards across ranks without repeats, when it is a `DistributedDL`; else None."
    return dl.n if isinstance(dl, DistributedDL) and hasattr(dl, "n") else None


def gather_rows(rows: list, n_items: int | None) -> list:
    """Every rank's `rows` (one per item, in batch order), in rank order, without `DistributedDL`'s repeats.

    For metrics that accumulate Python rows: read `n_items = distributed_item_count(learn.dl)` in `accumulate`
    and call this in `value`, which every rank computes. `DistributedDL` repeats the first items at the end of the
    last rank's shard to even the shards (l.113), so the first `n_items` gathered rows are each item once.
    With `n_items` None (not in a `distrib_ctx`), `rows` as they are.
    """
    if n_items is None or not dist.is_initialized():
        return rows
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(rows))
    return [row for part in gathered for row in part][:n_items]


def _rank0_save_pretrained(save_pretrained):
    "`save_pretrained` that writes from rank 0 only; every rank returns once the directory is complete."
    @functools.wraps(save_pretrained)
    def wrapper(self: Learner, path, *args, **kwargs):
        if num_distrib() <= 1:
            return save_pretrained(self, path, *args, **kwargs)
        if not dist.is_initialized():  # no process group to wait on: as fastai's `Learner.save` (rank 0 writes)
            return Path(path) if rank_distrib() else save_pretrained(self, path, *args, **kwargs)
        error = None
        if dist.get_rank() == 0:
            try:
                save_pretrained(self, path, *args, **kwargs)
            except Exception as e:  # tell the other ranks, so they raise instead of waiting forever
                error = e
        outcome = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(outcome, src=0)  # also the barrier: rank 0 has finished writing
        if error is not None:
            raise error
        if outcome[0] is not None:
            raise RuntimeError(f"save_pretrained failed on rank 0 ({outcome[0]}); see rank 0's traceback")
        return Path(path)
    wrapper.rank0_only = True
    return wrapper


def support_distributed() -> None:
    """Install blurlite's fixes to fastai's distributed training (idempotent); see the module docstring.

    Single-process runs are unchanged: every fix applies only under `distrib_ctx` with `WORLD_SIZE` > 1.
    Non-blurlite learners get the CPU mode and the backend-neutral broadcast, without which they fail too.
    """
    from . import serialization  # noqa: F401  (defines Learner.save_pretrained; imported here, as it imports us)

    DistributedTrainer.__init__ = _distributed_trainer_init
    DistributedDL._broadcast = _broadcast
    DistributedDL._to_detach = _to_detach
    if not getattr(Learner.save_pretrained, "rank0_only", False):
        Learner.save_pretrained = _rank0_save_pretrained(Learner.save_pretrained)
