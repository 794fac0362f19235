"""One job across several GPUs of a worker: `SplitRuntime`, rank 0's handle on the group.

A worker started with `WAN_CP_DEVICES=cuda:0,cuda:1,cuda:2,cuda:3` is rank 0 of a torch.distributed
group and starts one follower process per other device. Every rank holds the whole pipeline on its
own GPU (a `WanRuntime` whose transformer diffusers splits with Ulysses, see `ranks.py`), so a step
takes about 1/N of the time. Rank 0 hands every render call to the followers over a pipe before
running it itself: all ranks then run the same call in step and agree at every step boundary
(`GroupSync`). A failure anywhere else leaves the group out of step: `ParallelFailed` tells the
worker to exit and be replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket

import torch
import torch.distributed as dist

from .config import RuntimeConfig
from .ranks import GroupSync, init_group
from .runtime import RenderCanceled, RenderResult, WanRuntime

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 1800  # a follower loads the whole pipeline from disk first
COLLECT_TIMEOUT_S = 300  # followers end a render when rank 0 does
PR_SET_PDEATHSIG = 1


class ParallelFailed(RuntimeError):
    """A rank failed mid-render: the group is out of step and the worker must be replaced."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Followers:
    """Rank 0's handle on the follower processes."""

    def __init__(self, config: RuntimeConfig):
        port, devices = _free_port(), config.cp_devices
        context = multiprocessing.get_context("spawn")
        self._pipes, self._processes = [], []
        for rank in range(1, len(devices)):
            mine, theirs = context.Pipe()
            process = context.Process(
                target=_follow,
                args=(config.for_rank(rank), port, theirs, os.getpid()),
                name=f"wan-rank{rank}",
                daemon=True,
            )
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


def _follow(config: RuntimeConfig, port: int, pipe, parent: int) -> None:
    """A follower process: load the pipeline on its device, then run whatever rank 0 runs."""
    rank = config.cp_rank
    _die_with_parent(parent)
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    sync = GroupSync()
    try:
        init_group(rank, len(config.cp_devices), port, config.device)
        runtime = WanRuntime(config, sync=sync).load()
    except BaseException as exc:
        pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise
    pipe.send(("ready", None))
    while (call := _next_call(pipe)) is not None:
        try:
            runtime.render(**call)
            pipe.send(("done", None))
        except BaseException as exc:
            if not sync.agreed_stop or not _healthy(runtime.device):  # rank 0 replaces the worker
                log.exception("render failed")
                pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
                os._exit(1)
            if not isinstance(exc, RenderCanceled):
                log.warning("render stopped on every rank: %s: %s", type(exc).__name__, exc)
            pipe.send(("stopped", None))
    dist.destroy_process_group()


class SplitRuntime:
    """Rank 0 of a split job: renders like a `WanRuntime` (whose attributes it passes through),
    with every call run in step by the followers."""

    def __init__(self, config: RuntimeConfig):
        if not config.split or config.cp_rank != 0:
            raise ValueError("a SplitRuntime is rank 0 of several cp_devices")
        self.config, self.sync = config, GroupSync()
        self.rank0 = WanRuntime(config, sync=self.sync)
        self.followers: Followers | None = None

    @property
    def pipe(self):
        return self.rank0.pipe

    @property
    def device(self) -> str:
        return self.rank0.device

    @property
    def load_seconds(self) -> float | None:
        return self.rank0.load_seconds

    def load(self) -> SplitRuntime:
        if self.followers is None:
            self.followers = Followers(self.config)  # they load while rank 0 does
            self.rank0.load()
            self.followers.wait_ready()
        return self

    def warm_up(self, sizes) -> float:
        return 0.0  # a split runtime compiles nothing

    def render(
        self,
        params,
        *,
        loras=(),
        scheduler: str = "auto",
        step_cache: float | None = None,
        speed: str = "exact",
        on_step=None,
    ) -> RenderResult:
        self.load()
        call = {
            "params": params,
            "loras": list(loras),
            "scheduler": scheduler,
            "step_cache": step_cache,
            "speed": speed,
        }
        self.followers.dispatch(call)
        try:
            result = self.rank0.render(**call, on_step=on_step)
        except BaseException as exc:
            if not self.sync.agreed_stop:  # a rank may be mid-collective: the group is unusable
                raise ParallelFailed(f"rank 0 failed mid-render: {type(exc).__name__}: {exc}") from exc
            self.followers.collect()
            raise
        self.followers.collect()
        return result

    def close(self) -> None:
        """End the follower processes."""
        if self.followers is not None:
            self.followers.close()
            self.followers = None


def build_runtime(config: RuntimeConfig) -> WanRuntime | SplitRuntime:
    """The runtime a worker renders with: alone, or rank 0 of a job split across `cp_devices`."""
    return SplitRuntime(config) if config.split else WanRuntime(config)
