"""Rank-aware helpers for data-parallel runs: gathers, sums and rank-0 execution.

Low level on purpose: it imports nothing of blurlite, so metrics, saving and the distributed trainer all use it
without an import circle. Outside a distributed run (one process, or no process group) every helper returns what
one process would: the values as they are, or the result of running the function here.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["world_size", "rank", "distributed", "all_gather", "gather_rows", "all_reduce_sums", "broadcast_list",
           "run_on_rank0"]


def world_size() -> int:
    "How many processes train together (`WORLD_SIZE`, as fastai's `num_distrib`; 1 in a plain process)."
    return int(os.environ.get("WORLD_SIZE", 0) or 0) or 1


def rank() -> int:
    "This process's rank (`RANK`, as fastai's `rank_distrib`)."
    return int(os.environ.get("RANK", 0) or 0)


def distributed() -> bool:
    "Several processes, and a process group to talk through."
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def all_gather(obj) -> list:
    "Every rank's `obj` (pickled), in rank order; `[obj]` outside a distributed run."
    if not distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def gather_rows(rows: list) -> list:
    """Every rank's `rows`, rank 0's first; `rows` as they are outside a distributed run.

    For metrics that keep Python rows (one per item): call it in `gather_from_ranks`, which blurlite calls on
    every rank at the end of a distributed validation, so that every rank makes the same collective calls.
    """
    return [row for part in all_gather(list(rows)) for row in part]


def all_reduce_sums(*values: float) -> list[float]:
    "The sums over ranks of `values` (float64); `values` as they are outside a distributed run."
    if not distributed():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if dist.get_backend() == "nccl":  # nccl reduces CUDA tensors only
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def broadcast_list(values: list, src: int = 0) -> list:
    "Rank `src`'s list `values` on every rank (any backend); `values` outside a distributed run."
    if not distributed():
        return list(values)
    objects = [list(values)]
    dist.broadcast_object_list(objects, src=src)
    return objects[0]


def run_on_rank0(work, what: str):
    """Run `work()` on rank 0 only (e.g. writing a file); every rank returns once it is done, or raises if it failed.

    Rank 0 gets `work()`'s result, the others None. Outside a distributed run it simply runs `work()` (a process
    launched as rank > 0 without a process group does nothing).
    """
    if not distributed():
        return None if rank() else work()
    error, result = None, None
    if dist.get_rank() == 0:
        try:
            result = work()
        except Exception as e:  # tell the other ranks, so that they raise instead of waiting forever
            error = e
    outcome = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(outcome, src=0)  # also the barrier: rank 0 has finished
    if error is not None:
        raise error
    if outcome[0] is not None:
        raise RuntimeError(f"{what} failed on rank 0 ({outcome[0]}); see rank 0's traceback")
    return result
