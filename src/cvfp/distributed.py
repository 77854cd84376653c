"""Processes started by ``torchrun``: who this process is, and the collectives a sweep and a sharded point need.

A sweep launched as ``torchrun --nproc-per-node G -m cvfp.cli scaling ...`` (or on several nodes
with torchrun's rendezvous flags) runs one process per device. ``init`` joins them in a
``torch.distributed`` process group and pins each process to its local GPU. The backend is gloo,
one backend for CPU and GPU nodes alike: a spread sweep exchanges only small Python objects, and
a sharded point (``--shard-point``) broadcasts and all-reduces tensors, which gloo takes on either
device (its all_gather takes CPU ones: ``all_gather_tensor`` stages through host memory). On GPU
nodes NCCL would move a sharded point's gradients faster; not used yet (no GPU to test it on).
Without torchrun every function here is the single-process identity.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist

# Ranks wait at the end of a sweep for the slowest point, which may train for hours.
WAIT = datetime.timedelta(days=7)


@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """The one process that writes what all of them share (results, fits, reports)."""
        return self.rank == 0


def ranks() -> Ranks:
    """This process's place, from torchrun's environment (one process when it is absent)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(int(env["RANK"]), world, int(env.get("LOCAL_RANK", "0")), int(env.get("LOCAL_WORLD_SIZE", "1")))


def init() -> Ranks:
    """Join torchrun's process group (once) and pin this process to its device and CPU share."""
    me = ranks()
    if me.world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=WAIT)
        if torch.cuda.is_available():
            torch.cuda.set_device(me.local_rank % torch.cuda.device_count())
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // me.local_world))
    return me


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place (nothing in one process)."""
    if dist.is_initialized():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_gather_tensor(t: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``t`` (same shape on every rank), in rank order (``[t]`` in one process). Staged through
    host memory: gloo gathers CPU tensors only (its broadcast and all_reduce take CUDA ones)."""
    if not dist.is_initialized():
        return [t]
    host = t.detach().cpu().contiguous()
    out = [torch.empty_like(host) for _ in range(dist.get_world_size())]
    dist.all_gather(out, host)
    return [x.to(t.device) for x in out]


@dataclasses.dataclass(frozen=True)
class Shard:
    """Rows [start, end) of a stream of ``total`` rows: one rank's contiguous share, in whole batches."""

    start: int
    end: int
    total: int
    rank: int = 0
    world: int = 1


def shard_rows(total: int, batch: int, rank: int = 0, world: int = 1) -> Shard:
    """Rank ``rank``'s share of ``total`` rows cut into batches of ``batch``: consecutive whole batches,
    as even as the batch count allows (the first ranks take one more when it does not divide)."""
    batches = -(-total // batch)
    if batches < world:
        raise ValueError(f"{total} rows make {batches} batches of {batch}: too few for {world} ranks")
    per, extra = divmod(batches, world)
    first = rank * per + min(rank, extra)
    last = first + per + (1 if rank < extra else 0)
    return Shard(first * batch, min(total, last * batch), total, rank, world)


@dataclasses.dataclass(frozen=True)
class BatchShare:
    """Rank ``rank`` of ``world``: its part of every batch of a sharded point's Phase 2 and scoring."""

    rank: int = 0
    world: int = 1

    def rows(self, start: int, end: int) -> tuple[int, int]:
        """This rank's rows of the batch [start, end): contiguous, as even as the rows allow (the first
        ranks take one more when the world does not divide them; a part may be empty)."""
        per, extra = divmod(end - start, self.world)
        first = start + self.rank * per + min(self.rank, extra)
        return first, first + per + (1 if self.rank < extra else 0)


def exchange_rows(local: torch.Tensor, shard: Shard, batch: int, wanted: torch.Tensor) -> torch.Tensor:
    """Rows ``wanted`` (global indices) of a stream held in contiguous shards (``shard_rows(shard.total,
    batch, r, world)`` on rank r, ``local`` here): each rank broadcasts its shard in turn and every rank
    keeps the rows it wants, so at most one other shard is held at a time. Every rank takes part."""
    out = local.new_empty(wanted.shape[0], *local.shape[1:])
    wanted = wanted.to(local.device)
    for source in range(shard.world):
        theirs = shard_rows(shard.total, batch, source, shard.world)
        rows = local if source == shard.rank else local.new_empty(theirs.end - theirs.start, *local.shape[1:])
        if shard.world > 1:
            dist.broadcast(rows, src=source)
        inside = (wanted >= theirs.start) & (wanted < theirs.end)
        out[inside] = rows[wanted[inside] - theirs.start]
    return out


def assign(costs: list[float], world: int) -> list[int]:
    """The rank of each task: the costliest first, each to the rank with the least work so far
    (deterministic, so every rank computes the same plan without talking)."""
    load = [0.0] * world
    owner = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += costs[i]
    return owner
