"""What a package needs to run under ``torchrun``: the process group, this rank, and sharded evaluation.

Everything here is a no-op in a single process (WORLD_SIZE unset or 1), so library code calls it
unconditionally. Under ``torchrun --nproc_per_node N`` the group uses NCCL when CUDA is visible and gloo
otherwise (CPU).

Sharded evaluation: every rank scores ``shard(items)`` (a strided slice, like DistributedSampler without
padding), then ``gather_shards`` puts the per-item results back into the original order on every rank, so
a metric computed from the gathered list is the single-process metric exactly::

    def eval_fn(model):
        preds = [predict(model, x) for x in shard(dev)]
        preds = gather_shards(preds, len(dev))
        return {"acc": accuracy(preds, [y for _, y in dev])}

and ``Trainer.fit(..., eval_sharded=True)`` calls such an ``eval_fn`` on every rank.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


# How long a collective may wait. Some stages run on rank 0 alone while the others wait in a barrier (sampling
# synthesis trees, writing a synthetic data set): torch's 30-minute default would end a long preparation.
TIMEOUT = timedelta(hours=3)


def init_from_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); under torchrun (WORLD_SIZE > 1) initialize the process group once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)
        atexit.register(_destroy)  # a rank leaving with its group alive can abort in gloo's teardown
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_world() -> tuple[int, int]:
    """(rank, world_size) of this process: (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank_world()[0] == 0


def shard(items: Sequence[T]) -> list[T]:
    """This rank's items: ``items[rank::world]`` (every item goes to exactly one rank)."""
    rank, world = rank_world()
    return list(items[rank::world]) if world > 1 else list(items)


def gather_shards(local: Sequence[T], n_total: int) -> list[T]:
    """Undo :func:`shard`: every rank gets all ``n_total`` results in the original item order.

    ``local`` must be the results of ``shard(items)`` in order (any picklable objects). A single process
    returns ``list(local)``.
    """
    rank, world = rank_world()
    if world == 1:
        if len(local) != n_total:
            raise ValueError(f"gather_shards: {len(local)} results for {n_total} items")
        return list(local)
    init_from_env()  # a package may gather before its first Trainer has set up the group
    parts: list[list[T] | None] = [None] * world
    dist.all_gather_object(parts, list(local))
    out: list[T | None] = [None] * n_total
    for r, part in enumerate(parts):
        expected = len(range(r, n_total, world))
        if part is None or len(part) != expected:
            raise ValueError(f"gather_shards: rank {r} returned {0 if part is None else len(part)} results, "
                             f"expected {expected} of {n_total}")
        out[r::world] = part
    return out  # type: ignore[return-value]


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (any picklable object); ``obj`` itself in one process.

    For decisions that must not differ between ranks, e.g. whether a stage's output already exists while
    rank 0 may be writing it: every rank takes rank 0's answer."""
    if rank_world()[1] == 1:
        return obj
    init_from_env()
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (under torchrun; the group is set up on first use). A no-op in one process."""
    init_from_env()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
