"""One delivery of a render message, read top to bottom: claim -> render -> store -> settle.

    0. The host's model is loaded first: a worker that cannot load leaves the job queued.
    1. Claim: the job goes queued -> running for this worker. Nothing to claim (canceled, finished,
       a duplicate delivery): the attempt ends as "skipped".
    2. Render each prompt not stored yet (a redelivered job resumes where it stopped). A heartbeat
       runs from the claim to the settlement; the deadline scales with the steps left and is
       checked at every step, as are cancels (`StepReporter`).
    3. Store: each prompt's frames go to the host's finisher thread, which encodes and stores them
       while the GPU renders the next prompt, or the next job.
    4. Settle, on the finisher thread once every output is stored: the job succeeds. Any failure
       on the way is settled by `failure_decision`: its error code, whether the job goes back to
       the queue, whether this worker must exit to be replaced.

Every change of the job row goes through `webapp.jobs.services`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch
from django.conf import settings
from django.db import connection

from webapp.jobs import services
from webapp.jobs.models import GenerationJob
from webapp.loras.models import Visibility
from workers.host import GpuHost
from workers.outputs import StorageFailed, output_record, output_store
from workers.pipeline.parallel import ParallelFailed
from workers.pipeline.params import PromptParams
from workers.pipeline.runtime import LoraSpec, RenderCanceled
from workers.watchdogs import EXIT_CODE_REPLACE_ME, Deadline, Heartbeat, JobTimeout, cuda_is_healthy

log = logging.getLogger(__name__)


_SERVER_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[/\\][^\s'\"():,]+){2,}")


def public_message(exc: BaseException) -> str:
    """The first line of an exception as every member reads it on the job: server paths cut to their
    file name (the log keeps the whole traceback)."""
    text = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return _SERVER_PATH.sub(lambda match: Path(match.group()).name or "<path>", text)[:500]


class LoraMissing(Exception):
    pass


@dataclass(frozen=True)
class Decision:
    code: str | None  # None: nothing to record (the job was canceled)
    retry: bool = False
    exit_worker: bool = False


def failure_decision(exc: BaseException, *, on_cuda: bool, cuda_healthy=cuda_is_healthy) -> Decision:
    """What a failure means for the job and for this worker: the one place that decides it."""
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


class StepReporter:
    """After every denoising step: stop if the job was canceled or ran out of time; write progress
    at most every JOB_PROGRESS_INTERVAL_S (a cheap indexed read per step, a write per interval)."""

    def __init__(self, job: GenerationJob, prompt_index: int, deadline: Deadline):
        self.job, self.prompt_index, self.deadline = job, prompt_index, deadline
        self.last = 0.0

    def __call__(self, step: int, steps: int) -> None:
        self.deadline.check()
        now = time.monotonic()
        if step < steps and now - self.last < settings.JOB_PROGRESS_INTERVAL_S:
            if not services.job_is_active(job=self.job):
                raise RenderCanceled()
            return
        self.last = now
        if not services.job_report_progress(job=self.job, prompt_index=self.prompt_index, step=step, steps=steps):
            raise RenderCanceled()


class JobAttempt:
    def __init__(self, job_id: str, *, host: GpuHost, worker: str):
        self.job_id, self.host, self.worker = job_id, host, worker
        self.job: GenerationJob | None = None
        self.heartbeat: Heartbeat | None = None

    def run(self) -> str:
        """The whole attempt; returns what happened ("rendered": settling on the finisher thread)."""
        self.host.runtime  # noqa: B018 - 0. loads the model
        self.host.wait_for_finisher(max_pending=1)  # store at most one earlier job while this one renders
        self.job = services.job_start(job_id=self.job_id, worker=self.worker)  # 1.
        if self.job is None:
            return "skipped"
        self.heartbeat = Heartbeat(lambda: services.job_heartbeat(job=self.job), settings.JOB_HEARTBEAT_S).start()
        try:
            with self._deadline() as deadline:
                stored = self.render_prompts(deadline)  # 2. and 3.
        except Exception as exc:
            self.heartbeat.stop()
            return self.settle_failure(exc) or "canceled"
        self.host.settle_later(lambda: self.settle(stored))  # 4.
        return "rendered"

    def _deadline(self) -> Deadline:
        steps = sum(p["sample_steps"] for p in self.job.prompts)

        def give_up():
            services.job_fail(
                job=self.job, code="TIMEOUT", message="The job passed its hard time limit; worker replaced."
            )

        return Deadline.for_steps(
            steps,
            base_s=settings.JOB_TIME_LIMIT_BASE_S,
            per_step_s=settings.JOB_TIME_LIMIT_PER_STEP_S,
            grace_s=settings.JOB_TIME_LIMIT_GRACE_S,
            on_hard_limit=give_up,
        )

    def render_prompts(self, deadline: Deadline) -> list[Future]:
        """2. Render every prompt not stored yet; 3. hand each one's frames to the finisher thread."""
        job = self.job
        job_loras = list(job.job_loras.select_related("lora"))
        loras, names = self._lora_specs(job_loras), [jl.name for jl in job_loras]
        private = [jl.lora.visibility == Visibility.PRIVATE for jl in job_loras]
        done = set(job.outputs.values_list("index", flat=True))
        stored = []
        for index, values in enumerate(job.prompts):
            if index in done:
                continue
            params = PromptParams(**values)
            result = self.host.predict(
                params,
                loras=loras,
                scheduler=job.scheduler,
                step_cache=job.step_cache,
                speed=job.speed,
                on_step=StepReporter(job, index, deadline),
            )
            record = output_record(job, params, result, names, private)
            stored.append(self.host.store_later(output_store, job, index, values, result, record))
        return stored

    def _lora_specs(self, job_loras) -> list[LoraSpec]:
        specs = []
        draft = self.job.draft_lora(job_loras)
        for job_lora in job_loras:
            if job_lora.lora is None:
                # Every member reads a job's error: it names no LoRA (a private one stays private).
                raise LoraMissing(f"LoRA {job_lora.position + 1} of the stack was deleted after submission.")
            path = self.host.lora_path(job_lora.lora.file, job_lora.sha256)
            specs.append(
                LoraSpec(
                    path=str(path),
                    sha256=job_lora.sha256,
                    multiplier=job_lora.multiplier,
                    software_version=job_lora.lora.software_version or None,
                    keep_multiplier=job_lora is draft,
                )
            )
        return specs

    def settle(self, stored: list[Future]) -> None:
        """4. On the finisher thread, after every output of this attempt is stored (or one failed)."""
        try:
            timings = {"load": self.host.runtime.load_seconds, "prompts": [s.result() for s in stored]}
        except BaseException as exc:
            self.heartbeat.stop()
            self.settle_failure(exc)
        else:
            self.heartbeat.stop()
            services.job_succeed(job=self.job, timings=timings)
        finally:
            connection.close()

    def settle_failure(self, exc: BaseException) -> str | None:
        """Record what a failure means (see failure_decision); exits the process if it must."""
        job, decision = self.job, failure_decision(exc, on_cuda=self.host.on_cuda)
        if decision.code is None:
            log.info("job %s canceled while rendering; partial work dropped", job.pk)
            return None
        if decision.retry:
            services.job_requeue(job_id=job.pk, reason=f"{decision.code}: {public_message(exc)}")
        else:
            if decision.code == "RENDER_FAILED":
                log.error("job %s failed", job.pk, exc_info=exc)
            services.job_fail(job=job, code=decision.code, message=public_message(exc))
        if decision.exit_worker:
            log.error("%s: exiting so this worker is replaced", decision.code)
            os._exit(EXIT_CODE_REPLACE_ME)
        return decision.code
