"""Reads of generation jobs: lookups, the queue page's filters, what a viewer sees of a job's LoRAs,
and ETAs from measured step times."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db.models import Prefetch, QuerySet

from webapp.core.errors import NotFound
from webapp.loras.selectors import ID_MAX, lora_list, lora_visible
from webapp.prompts.models import PromptSet

from .models import GenerationJob, JobLora, JobOutput, JobStatus

ETA_SAMPLE = 200  # recent outputs whose step times estimate the work left


def job_list() -> QuerySet[GenerationJob]:
    return GenerationJob.objects.select_related("owner").prefetch_related(
        Prefetch("job_loras", queryset=JobLora.objects.select_related("lora")), "outputs"
    )


def job_get(*, job_id, code: str = "JOB_NOT_FOUND") -> GenerationJob:
    try:
        return job_list().get(pk=job_id)
    except (GenerationJob.DoesNotExist, ValidationError, ValueError):  # malformed ids are just unknown
        raise NotFound(code, f"No job with id {job_id}.", details={"id": str(job_id)}) from None


def job_filter(
    *, user, status: str = "", owner: str = "", lora: int | None = None, q: str = ""
) -> QuerySet[GenerationJob]:
    """The team's jobs, newest first, narrowed by status, owner's username, a LoRA of the stack (one
    `user` may see: another's private LoRA matches nothing) and prompt text (any resolved prompt)."""
    jobs = job_list()
    if status:
        jobs = jobs.filter(status=status)
    if owner:
        jobs = jobs.filter(owner__username=owner)
    if lora is not None:
        jobs = jobs_using_lora(jobs=jobs, lora=lora, user=user)
    if q:
        jobs = jobs.filter(prompts__icontains=q)  # the JSON text: prompts, negatives and their values
    return jobs


def jobs_using_lora(*, jobs: QuerySet[GenerationJob], lora, user) -> QuerySet[GenerationJob]:
    """The jobs of `jobs` whose stack holds LoRA id `lora`, if `user` may see that LoRA; none otherwise,
    so the filter confirms nothing about LoRAs the viewer cannot see."""
    if lora != int(lora) or not 0 < lora <= ID_MAX or not lora_list(user=user).filter(pk=int(lora)).exists():
        return jobs.none()
    return jobs.filter(pk__in=JobLora.objects.filter(lora_id=int(lora)).values("job_id"))


PRIVATE_LORA, GONE_LORA = "private LoRA", "deleted LoRA"


@dataclass(frozen=True)
class ShownLora:
    """One LoRA of a job's stack as a viewer sees it: the LoRA's id, name and sha256, or for a LoRA
    they may not see only a placeholder name (id and sha256 None) and the multiplier."""

    lora: int | None
    name: str
    sha256: str | None
    multiplier: float
    url: str
    pending: bool


def _placeholder(job_lora: JobLora, *, job: GenerationJob, user) -> str | None:
    """The name shown instead of `job_lora`'s to `user`, or None when they may see it all: staff, the
    job's owner and whoever may see the LoRA. Of a deleted LoRA no one can tell any more whether it
    was private, so only the job's owner and staff still see its name and sha256."""
    if user is None or user.is_staff or (job.owner_id is not None and job.owner_id == user.pk):
        return None
    if job_lora.lora is not None:
        return None if lora_visible(lora=job_lora.lora, user=user) else PRIVATE_LORA
    return None if job_lora.pending else GONE_LORA  # a URL not fetched yet is the owner's own text


def job_lora_shown(job_lora: JobLora, *, job: GenerationJob, user) -> ShownLora:
    """One LoRA of `job`'s stack as `user` may see it (every door shows a job's LoRAs through this)."""
    placeholder = _placeholder(job_lora, job=job, user=user)
    if placeholder:
        return ShownLora(None, placeholder, None, job_lora.multiplier, "", False)
    return ShownLora(
        job_lora.lora_id, job_lora.name, job_lora.sha256 or None, job_lora.multiplier, job_lora.url, job_lora.pending
    )


def job_loras_shown(job: GenerationJob, *, user) -> list[ShownLora]:
    """The job's LoRA stack as `user` may see it."""
    return [job_lora_shown(job_lora, job=job, user=user) for job_lora in job.job_loras.all()]


def job_record_shown(record: dict, *, job: GenerationJob, user) -> dict:
    """An output's reproduction record with the LoRAs `user` may not see reduced as in `job_loras_shown`."""
    hidden = {
        job_lora.sha256: placeholder
        for job_lora in job.job_loras.all()
        if (placeholder := _placeholder(job_lora, job=job, user=user)) and job_lora.sha256
    }
    if not hidden or not isinstance(record.get("loras"), list):
        return record
    loras = [
        {"name": hidden[item["sha256"]], "sha256": None, "multiplier": item.get("multiplier")}
        if isinstance(item, dict) and item.get("sha256") in hidden
        else item
        for item in record["loras"]
    ]
    return {**record, "loras": loras}


def prompt_set_choices() -> list[tuple[int, str]]:
    """(id, name) of the prompt sets a job may take its prompts from (every set is the team's)."""
    return list(PromptSet.objects.order_by("name").values_list("pk", "name"))


def step_seconds_by_shape() -> dict[tuple[int, int, int], float]:
    """Median measured denoising seconds per step of recent outputs, by (width, height, num_frames)."""
    measured = defaultdict(list)
    recent = JobOutput.objects.order_by("-created_at").values_list(
        "width", "height", "num_frames", "record__timings__denoise_per_step"
    )[:ETA_SAMPLE]
    for width, height, frames, seconds in recent:
        if isinstance(seconds, int | float):
            measured[width, height, frames].append(seconds)
    return {shape: statistics.median(values) for shape, values in measured.items()}


def _seconds_left(job: dict, per_step: dict) -> float | None:
    """Denoising seconds left of an active job (a dict of its fields); None when a size was never measured."""
    running = job["status"] == JobStatus.RUNNING
    current = job["progress"].get("prompt", 0) if running else 0
    total = 0.0
    for index, prompt in enumerate(job["prompts"][current:], current):
        seconds = per_step.get((prompt["width"], prompt["height"], prompt["num_frames"]))
        if seconds is None:
            return None
        done = job["progress"].get("step", 0) if running and index == current else 0
        total += seconds * max(prompt["sample_steps"] - done, 0)
    return total


def job_etas(*, jobs) -> dict:
    """Seconds until each active job of `jobs` finishes, by id; None where some work ahead or of the
    job itself has a size never measured. A queued job waits for the running jobs and the queued ones
    the GPU queue serves first (higher priority, then earlier enqueued), shared among as many GPUs as
    jobs run now."""
    wanted = {job.pk for job in jobs if job.status in (JobStatus.QUEUED, JobStatus.RUNNING)}
    if not wanted:
        return {}
    per_step = step_seconds_by_shape()
    # A queued row is written only when it is enqueued (submit, retry, requeue): updated_at is its place in line.
    active = (
        GenerationJob.objects.filter(status__in=(JobStatus.QUEUED, JobStatus.RUNNING))
        .order_by("-priority", "updated_at")
        .values("id", "status", "prompts", "progress")
    )
    running = [job for job in active if job["status"] == JobStatus.RUNNING]
    queued = [job for job in active if job["status"] == JobStatus.QUEUED]
    etas = {job["id"]: _seconds_left(job, per_step) for job in running}
    gpus = max(len(running), 1)
    ahead = sum(etas.values()) if None not in etas.values() else None
    for job in queued:
        own = _seconds_left(job, per_step)
        etas[job["id"]] = None if ahead is None or own is None else ahead / gpus + own
        ahead = None if ahead is None or own is None else ahead + own
    return {pk: etas.get(pk) for pk in wanted}
