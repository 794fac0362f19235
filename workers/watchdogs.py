"""Watchdogs of a running job attempt: the heartbeat thread, the time limits, and the CUDA probe.

`JobAttempt` (attempt.py) starts and stops them; they decide nothing about the job themselves,
except that a hard time limit ends the process (a stuck kernel never returns to Python).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)
EXIT_CODE_REPLACE_ME = 75  # the supervisor (compose restart policy, systemd) starts a fresh worker


class JobTimeout(Exception):
    pass


def cuda_is_healthy() -> bool:
    """Probe the CUDA context: synchronize, then a tiny op. A poisoned context fails one of them."""
    try:
        torch.cuda.synchronize()
        return (torch.ones(1, device="cuda") + 1).item() == 2.0
    except Exception:  # any error here means the context is unusable
        return False


class Deadline:
    """Soft limit checked at every step (raises JobTimeout); hard limit enforced by a timer thread
    that runs `on_hard_limit` and ends the process, since a stuck kernel never returns to Python.

    `for_steps` scales both with the work: a base for loading LoRAs, encoding, decoding and storing,
    plus so many seconds per denoising step, so a long healthy job is never cut and a stuck one still ends."""

    @classmethod
    def for_steps(
        cls, steps: int, *, base_s: float, per_step_s: float, grace_s: float, on_hard_limit: Callable[[], None]
    ) -> Deadline:
        soft_s = base_s + per_step_s * steps
        return cls(soft_s, soft_s + grace_s, on_hard_limit)

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

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
