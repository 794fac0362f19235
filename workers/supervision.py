"""Keeping a render honest while it runs: heartbeat, time limits, and what a failure means.

`failure_decision` is the one place that maps an exception to a job outcome:
which error code, whether the job goes back to the queue, and whether this
worker process must exit (a broken CUDA context cannot be trusted again).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from workers.pipeline.parallel import ParallelFailed
from workers.pipeline.runtime import RenderCanceled

log = logging.getLogger(__name__)
EXIT_CODE_REPLACE_ME = 75  # the supervisor (compose restart policy, systemd) starts a fresh worker


class JobTimeout(Exception):
    pass


class LoraMissing(Exception):
    pass


class StorageFailed(Exception):
    """Storage stayed unreachable through the retries; the job goes back to the queue."""


@dataclass(frozen=True)
class Decision:
    code: str | None  # None: nothing to record (the job was canceled)
    retry: bool = False
    exit_worker: bool = False


def cuda_is_healthy() -> bool:
    """Probe the CUDA context: synchronize, then a tiny op. A poisoned context fails one of them."""
    try:
        torch.cuda.synchronize()
        return (torch.ones(1, device="cuda") + 1).item() == 2.0
    except Exception:  # any error here means the context is unusable
        return False


def failure_decision(exc: BaseException, *, on_cuda: bool,
                     cuda_healthy: Callable[[], bool] = cuda_is_healthy) -> Decision:
    if isinstance(exc, RenderCanceled):
        return Decision(code=None)
    if isinstance(exc, JobTimeout):
        return Decision("TIMEOUT")
    if isinstance(exc, LoraMissing):
        return Decision("LORA_MISSING")
    if isinstance(exc, ParallelFailed):  # the GPUs of a split job are out of step: a fresh worker retries it
        return Decision("PARALLEL_FAILED", retry=True, exit_worker=True)
    if isinstance(exc, StorageFailed):
        return Decision("STORAGE_FAILED", retry=True)
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        if on_cuda:
            torch.cuda.empty_cache()
        # Bad input for this card (too many tokens), not a transient fault: never retried.
        return Decision("OUT_OF_MEMORY", exit_worker=on_cuda and not cuda_healthy())
    if on_cuda and not cuda_healthy():
        return Decision("CUDA_ERROR", retry=True, exit_worker=True)
    return Decision("RENDER_FAILED")


class Deadline:
    """Soft limit checked at every step (raises JobTimeout); hard limit enforced by a timer thread
    that runs `on_hard_limit` and ends the process, since a stuck kernel never returns to Python."""

    def __init__(self, soft_s: float, hard_s: float, on_hard_limit: Callable[[], None]):
        self.soft_s, self.start = soft_s, time.monotonic()
        self._timer = threading.Timer(hard_s, self._expire, args=[on_hard_limit])
        self._timer.daemon = True

    def check(self) -> None:
        if time.monotonic() - self.start > self.soft_s:
            raise JobTimeout(f"the job ran past its time limit of {self.soft_s:.0f}s")

    def _expire(self, on_hard_limit):
        log.error("hard time limit reached; this worker exits to be replaced")
        try:
            on_hard_limit()
        finally:
            os._exit(EXIT_CODE_REPLACE_ME)

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()


class Heartbeat:
    """Calls `beat()` every `interval_s` from a thread while a job runs, whatever phase it is in
    (rendering on the task, then storing on the finisher thread, which stops it)."""

    def __init__(self, beat: Callable[[], None], interval_s: float):
        self.beat, self.interval_s = beat, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")

    def _run(self):
        from django.db import connection

        try:
            while not self._stop.wait(self.interval_s):
                try:
                    self.beat()
                except Exception:
                    log.exception("heartbeat failed")
        finally:
            connection.close()

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
