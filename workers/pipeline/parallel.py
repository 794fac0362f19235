"""One job across several GPUs of a worker: diffusers' context parallelism (Ulysses).

A worker started with `WAN_CP_DEVICES=cuda:0,cuda:1,cuda:2,cuda:3` is rank 0 of a torch.distributed
group and starts one follower process per other device. Every rank holds the whole pipeline on its
own GPU; inside the transformer each rank attends over a slice of the video tokens and the heads
are exchanged all-to-all (Ulysses), so a step takes about 1/N of the time. Rank 0 hands every render
call to the followers over a pipe before running it itself: all ranks then run the same call in
step. At each step boundary the ranks agree on whether to go on, so a cancel or a time limit on
rank 0 stops every rank at the same step and the group stays usable. A failure anywhere else
leaves the group out of step: `ParallelFailed` tells the worker to exit and be replaced.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)
COLLECTIVE_TIMEOUT = timedelta(minutes=5)  # ranks load LoRAs and encode text on their own before a step
READY_TIMEOUT_S = 1800  # a follower loads the whole pipeline from disk first
COLLECT_TIMEOUT_S = 300  # followers end a render when rank 0 does
PR_SET_PDEATHSIG = 1


class ParallelFailed(RuntimeError):
    """A rank failed mid-render: the group is out of step and the worker must be replaced."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init_group(rank: int, world: int, port: int, device: str) -> None:
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


def all_ready(ready: bool) -> bool:
    """Every rank calls this before the first step; true on all ranks when each one is ready
    (LoRAs active, prompt encoded), so a bad LoRA stops every rank before any collective."""
    flag = torch.tensor([int(ready)])  # a CPU tensor: the group's gloo part carries it
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def agree_to_stop(stop: bool) -> bool:
    """Every rank calls this at a step boundary; true on all ranks when rank 0 asks to stop."""
    flag = torch.tensor([int(stop)])
    dist.broadcast(flag, src=0)
    return bool(flag.item())


class Followers:
    """Rank 0's handle on the follower processes."""

    def __init__(self, devices: list[str], runtime_kwargs: dict):
        port = _free_port()
        context = multiprocessing.get_context("spawn")
        self._pipes, self._processes = [], []
        for rank in range(1, len(devices)):
            mine, theirs = context.Pipe()
            process = context.Process(target=_follow, args=(rank, devices, port, runtime_kwargs, theirs, os.getpid()),
                                      name=f"wan-rank{rank}", daemon=True)
            process.start()
            self._pipes.append(mine)
            self._processes.append(process)
        init_group(0, len(devices), port, devices[0])

    def wait_ready(self) -> None:
        self._collect(READY_TIMEOUT_S, "load the model")

    def dispatch(self, call: dict) -> None:
        for rank, (pipe, process) in enumerate(zip(self._pipes, self._processes), start=1):
            try:
                if not process.is_alive():
                    raise OSError(f"exit code {process.exitcode}")
                pipe.send(call)
            except OSError as exc:
                raise ParallelFailed(f"rank {rank} is gone ({exc})") from exc

    def collect(self) -> None:
        """Wait for every follower to finish the call rank 0 just finished."""
        self._collect(COLLECT_TIMEOUT_S, "render")

    def _collect(self, timeout_s: float, what: str) -> None:
        for rank, pipe in enumerate(self._pipes, start=1):
            try:
                if not pipe.poll(timeout_s):
                    raise ParallelFailed(f"rank {rank} did not {what} in {timeout_s:.0f}s")
                status, detail = pipe.recv()
            except (EOFError, OSError) as exc:  # the follower died (killed, out of host memory, ...)
                raise ParallelFailed(f"rank {rank} is gone ({type(exc).__name__})") from exc
            if status == "failed":
                raise ParallelFailed(f"rank {rank} failed to {what}: {detail}")

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        dist.destroy_process_group()


def _die_with_parent(parent: int) -> None:
    """The kernel ends this follower when rank 0 dies, even by os._exit (which skips the atexit
    handler that ends daemon processes): its GPU is free for the worker that replaces it. (The
    signal follows the thread that started the follower: the worker's main thread.)"""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # rank 0 died before the line above
        os._exit(1)


def _healthy(device: str) -> bool:
    """After an agreed stop: is this rank's CUDA context still usable (a sticky error is not)?"""
    if not device.startswith("cuda"):
        return True
    try:
        torch.cuda.synchronize()
        return True
    except Exception:  # any CUDA error here means the context is unusable
        return False


def _next_call(pipe) -> dict | None:
    try:
        return pipe.recv()
    except EOFError:  # rank 0 is gone (its worker exited): so is this follower
        return None


def _follow(rank: int, devices: list[str], port: int, runtime_kwargs: dict, pipe, parent: int) -> None:
    """A follower process: load the pipeline on its device, then run whatever rank 0 runs."""
    from .runtime import RenderCanceled, WanRuntime

    _die_with_parent(parent)
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    try:
        runtime = WanRuntime(**runtime_kwargs, cp_devices=devices, cp_rank=rank, cp_port=port).load()
    except BaseException as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise
    pipe.send(("ready", None))
    while (call := _next_call(pipe)) is not None:
        try:
            runtime.render(**call)
            pipe.send(("done", None))
        except BaseException as exc:
            if not runtime.agreed_stop or not _healthy(runtime.device):  # rank 0 replaces the worker
                log.exception("render failed")
                pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
                os._exit(1)
            if not isinstance(exc, RenderCanceled):
                log.warning("render stopped on every rank: %s: %s", type(exc).__name__, exc)
            pipe.send(("stopped", None))
    dist.destroy_process_group()
