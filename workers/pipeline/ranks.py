"""The ranks of one job split across GPUs: joining the group, splitting attention, agreeing.

Every rank renders the same call in step. Before the first step they agree that each one is
ready (LoRAs active, prompt encoded), and at every step boundary they agree whether to go on, so a
cancel or a time limit on rank 0 stops every rank at the same step and the group stays usable.
A runtime that renders alone uses `SoloSync`, which agrees with itself.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT = timedelta(minutes=5)  # ranks load LoRAs and encode text on their own before a step


def init_group(rank: int, world: int, port: int, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))  # NCCL and bare "cuda" tensors mean this rank's GPU
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT)


def enable_ulysses(transformer, world: int) -> None:
    from diffusers import ContextParallelConfig

    # diffusers picks a rank's device as rank % accelerator count, which is 0 without a GPU; the CPU
    # (tests, a CPU-only worker) runs the same split over gloo.
    cpu = not torch.cuda.is_available()
    count = torch.accelerator.device_count
    with contextlib.ExitStack() as stack:
        if cpu:
            torch.accelerator.device_count = lambda: 1
            stack.callback(setattr, torch.accelerator, "device_count", count)
        transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))


class SoloSync:
    """A runtime rendering alone: nothing to agree with."""

    agreed_stop = False

    def begin(self) -> None:
        pass

    def ready(self, ready: bool) -> bool:
        return ready

    def stop(self, stop: bool) -> bool:
        return stop


class GroupSync:
    """A rank of a split job. `agreed_stop` tells whether the last render ended where every rank
    agreed to stop (the group is in step) or somewhere else (it is not, and must be replaced)."""

    def __init__(self):
        self.agreed_stop = False

    def begin(self) -> None:
        self.agreed_stop = False

    def ready(self, ready: bool) -> bool:
        """True on every rank when each one is ready; a rank that is not stops them all here."""
        flag = torch.tensor([int(ready)])  # a CPU tensor: the group's gloo part carries it
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        self.agreed_stop = not flag.item()
        return bool(flag.item())

    def stop(self, stop: bool) -> bool:
        """True on every rank when rank 0 asks to stop at this step boundary."""
        flag = torch.tensor([int(stop)])
        dist.broadcast(flag, src=0)
        self.agreed_stop = bool(flag.item())
        return self.agreed_stop
