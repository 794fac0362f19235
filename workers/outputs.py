"""Storing one rendered prompt: MP4 (+ poster, + WebP) through Django's default storage, then its row.

The files are encoded to a temporary folder and saved whole (with retries); the output row is
written only after they are there, so nothing half-written is ever visible. Runs on the host's
finisher thread while the GPU renders the next prompt.
"""

from __future__ import annotations

import functools
import logging
import platform
import tempfile
import time
from importlib import metadata as importlib_metadata
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from webapp.jobs import services
from webapp.jobs.models import GenerationJob
from workers.pipeline.params import PromptParams
from workers.pipeline.runtime import RenderCanceled, RenderResult
from workers.pipeline.video import png_bytes, webp_bytes, write_mp4

log = logging.getLogger(__name__)
SOFTWARE = ("torch", "diffusers", "transformers", "peft")


class StorageFailed(Exception):
    """Storage stayed unreachable through the retries; the job goes back to the queue."""


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


def output_record(
    job: GenerationJob,
    params: PromptParams,
    result: RenderResult,
    names: list[str],
    private: list[bool],
) -> dict:
    """Everything needed to reproduce one output; stored with its row and (see `shared_record`) in the MP4."""
    return {
        "job_id": str(job.id),
        "model": job.model,
        "checkpoint": settings.WAN_MODEL_PATH,
        **params.as_dict(),
        "scheduler": result.scheduler,
        "speed": result.speed,
        "preset": job.preset,  # draft: the stack above ends with the draft LoRA, the steps and guidance are its own
        "lora_math": result.lora_math,
        "attention": result.attention,
        "step_cache": result.step_cache,
        "loras": [
            {"name": n, "sha256": s.sha256, "multiplier": s.multiplier, **({"private": True} if p else {})}
            for n, s, p in zip(names, result.loras, private)
        ],
        "software": software_versions(),
    }


def shared_record(record: dict) -> dict:
    """The record as every team member may read it (the MP4 is theirs to download): private LoRAs unnamed."""
    hidden = {"name": "private LoRA", "sha256": None}
    return {**record, "loras": [{**lora, **hidden} if lora.get("private") else lora for lora in record["loras"]]}


def output_store(job: GenerationJob, index: int, values: dict, result: RenderResult, record: dict) -> dict:
    """Encode one prompt's frames, store the files whole, then write its output row; its timings."""
    fps = values["fps"]
    timings = result.timings
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        mp4 = write_mp4(result.frames, Path(tmp) / "video.mp4", fps=fps, metadata=shared_record(record))
        timings["mp4_encode"] = time.perf_counter() - start
        start = time.perf_counter()
        stem = f"outputs/{job.id}/{index:03d}_seed{values['seed']}"
        with mp4.open("rb") as fh:
            video = save_with_retry(f"{stem}.mp4", File(fh))
        poster = save_with_retry(f"{stem}.png", ContentFile(png_bytes(result.frames[0])))
        webp = save_with_retry(f"{stem}.webp", ContentFile(webp_bytes(result.frames, fps=fps))) if job.webp else ""
        timings["save"] = time.perf_counter() - start
    record["timings"] = timings
    stored = services.job_add_output(
        job=job,
        index=index,
        video=video,
        poster=poster,
        webp=webp,
        params=values,
        scheduler=result.scheduler,
        record=record,
    )
    if stored is None:  # canceled while encoding: drop this prompt's files
        for name in (video, poster, webp):
            if name:
                default_storage.delete(name)
        raise RenderCanceled()
    log.info("job %s prompt %d stored: %s", job.id, index, timings)
    return timings
