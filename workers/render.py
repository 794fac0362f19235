"""Render a claimed job: each prompt through the warm runtime, each output stored whole.

Outputs are encoded to a temporary file and saved through Django's default
storage; the output row is written only after the files are there, so nothing
half-written is ever visible. Prompts already rendered by an earlier attempt
are kept, so a redelivered job resumes where it stopped.
"""
from __future__ import annotations

import functools
import logging
import platform
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Callable

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import connection

from webapp.jobs import services
from webapp.jobs.models import GenerationJob
from workers.pipeline.params import PromptParams
from workers.pipeline.runtime import LoraSpec, RenderCanceled, RenderResult, WanRuntime
from workers.pipeline.video import png_bytes, webp_bytes, write_mp4
from workers.runtime import lora_local_path
from workers.supervision import Deadline, LoraMissing, StorageFailed

log = logging.getLogger(__name__)
SOFTWARE = ("torch", "diffusers", "transformers", "peft")


def save_with_retry(name: str, content, *, attempts: int = 3, backoff_s: float = 1.0) -> str:
    """Store a complete file, retrying transient storage errors; StorageFailed after the last try."""
    for attempt in range(1, attempts + 1):
        try:
            content.seek(0)
            return default_storage.save(name, content)
        except Exception as exc:  # network and S3 errors come in many types
            log.warning("saving %s failed (attempt %d/%d): %s", name, attempt, attempts, exc)
            if attempt == attempts:
                raise StorageFailed(f"could not store {name}: {exc}") from exc
            time.sleep(backoff_s * attempt)


@functools.cache
def software_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in SOFTWARE:
        versions[name] = importlib_metadata.version(name)
    return versions


def job_lora_specs(job_loras) -> list[LoraSpec]:
    specs = []
    for job_lora in job_loras:
        if job_lora.lora is None:
            raise LoraMissing(f"LoRA {job_lora.name} ({job_lora.sha256[:12]}) was deleted after submission.")
        path = lora_local_path(job_lora.lora.file, job_lora.sha256)
        specs.append(LoraSpec(path=str(path), sha256=job_lora.sha256, multiplier=job_lora.multiplier,
                              software_version=job_lora.lora.software_version or None))
    return specs


class StepCallback:
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


def output_record(job: GenerationJob, params: PromptParams, loras: list[LoraSpec], result: RenderResult,
                  names: list[str]) -> dict:
    return {
        "job_id": str(job.id), "model": job.model, "checkpoint": settings.WAN_MODEL_PATH,
        **params.as_dict(), "scheduler": result.scheduler, "speed": result.speed, "lora_math": result.lora_math,
        "step_cache": result.step_cache,
        "loras": [{"name": n, "sha256": s.sha256, "multiplier": s.multiplier} for n, s in zip(names, loras)],
        "software": software_versions(),
    }


def store_output(job: GenerationJob, index: int, values: dict, result, record: dict) -> dict:
    """Encode one prompt's frames, store the files whole, then write its output row."""
    fps = values["fps"]
    step_timings = result.timings
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        mp4 = write_mp4(result.frames, Path(tmp) / "video.mp4", fps=fps, metadata=record)
        step_timings["mp4_encode"] = time.perf_counter() - start
        start = time.perf_counter()
        stem = f"outputs/{job.id}/{index:03d}_seed{values['seed']}"
        with mp4.open("rb") as fh:
            video = save_with_retry(f"{stem}.mp4", File(fh))
        poster = save_with_retry(f"{stem}.png", ContentFile(png_bytes(result.frames[0])))
        webp = save_with_retry(f"{stem}.webp", ContentFile(webp_bytes(result.frames, fps=fps))) \
            if job.webp else ""
        step_timings["save"] = time.perf_counter() - start
    record["timings"] = step_timings
    if not services.job_is_active(job=job):  # canceled while encoding: drop this prompt's files
        for name in (video, poster, webp):
            if name:
                default_storage.delete(name)
        raise RenderCanceled()
    services.job_add_output(job=job, index=index, video=video, poster=poster, webp=webp, params=values,
                            scheduler=result.scheduler, record=record)
    log.info("job %s prompt %d stored: %s", job.id, index, step_timings)
    return step_timings


# One thread per worker process encodes and stores outputs in order, so the GPU goes on to the next
# prompt or job while the previous one is written (ffmpeg and uploads need no GPU).
_finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finisher")


_completions: list[Future] = []


def wait_for_finisher(*, max_pending: int) -> None:
    """Block until at most `max_pending` jobs are still being stored (bounds frames held in memory)."""
    while True:
        _completions[:] = [c for c in _completions if not c.done()]
        if len(_completions) <= max_pending:
            return
        _completions[0].result()


def drain() -> None:
    """Wait until every output handed to the finisher is stored (worker shutdown, tests)."""
    wait_for_finisher(max_pending=0)


def render_job(*, job: GenerationJob, runtime: WanRuntime, deadline: Deadline,
               finish: Callable[[BaseException | None, dict], None]) -> Future:
    """Render every prompt not stored yet; storing runs on the finisher thread, which calls
    `finish(error, timings)` once all outputs are stored (error None) or one of them failed."""
    job_loras = list(job.job_loras.select_related("lora"))
    loras, names = job_lora_specs(job_loras), [jl.name for jl in job_loras]
    done = set(job.outputs.values_list("index", flat=True))
    pending = []
    for index, values in enumerate(job.prompts):
        if index in done:
            continue
        params = PromptParams(**values)
        result = runtime.render(params, loras=loras, scheduler=job.scheduler, step_cache=job.step_cache,
                                speed=job.speed, on_step=StepCallback(job, index, deadline))
        record = output_record(job, params, loras, result, names)
        pending.append(_finisher.submit(store_output, job, index, values, result, record))

    def complete():
        try:
            timings = {"load": runtime.load_seconds, "prompts": [p.result() for p in pending]}
        except BaseException as exc:
            finish(exc, {})
        else:
            finish(None, timings)
        finally:
            connection.close()

    completion = _finisher.submit(complete)
    _completions.append(completion)
    return completion
