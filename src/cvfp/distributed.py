"""Processes started by ``torchrun``: who this process is, and the few collectives a sweep needs.

A sweep launched as ``torchrun --nproc-per-node G -m cvfp.cli scaling ...`` (or on several nodes
with torchrun's rendezvous flags) runs one process per device. ``init`` joins them in a
``torch.distributed`` process group (gloo: its collectives carry only small Python objects, so
one backend serves CPU and GPU nodes alike) and pins each process to its local GPU. Without
torchrun every function here is the single-process identity.
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
