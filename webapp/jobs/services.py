"""Every change of a generation job's state, one function each.

The web side submits, cancels and retries; the worker side starts, reports
progress, adds outputs and finishes. Each transition checks the state it
starts from inside a row lock, so a duplicate delivery or a late cancel is a
no-op rather than a corruption.
"""
from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework import status

from webapp.core.catalog import model_check
from webapp.core.errors import ApiError, Conflict
from webapp.core.permissions import require_manage
from webapp.loras.selectors import lora_list
from workers.broker import GPU_QUEUE
from workers.celery_app import app as celery_app
from workers.pipeline.params import PromptError, resolve_prompt

from .models import GenerationJob, JobLora, JobOutput, JobStatus

log = logging.getLogger(__name__)
RENDER_TASK = "workers.render_job"


def job_enqueue(*, job: GenerationJob) -> None:
    """Send the job's id to the GPU queue once the surrounding transaction commits."""
    job_id, priority = str(job.id), job.priority

    def send():
        # kombu's Redis priorities run 0 (first) to 9 (last); jobs use 9 as the most urgent.
        # The task id starts with the job id so the reconciler can find the message (workers/broker.py).
        celery_app.send_task(RENDER_TASK, args=[job_id], queue=GPU_QUEUE, priority=9 - priority,
                             task_id=f"{job_id}.{uuid.uuid4().hex[:12]}")

    # robust: a broker outage must not turn a created job into a 500; the reconciler re-sends it.
    transaction.on_commit(send, robust=True)


@transaction.atomic
def job_submit(*, owner, model: str, loras: list[tuple], prompts: list[dict], trigger_word: str | None = None,
               priority: int = 0, scheduler: str = "auto", prompt_semantics: str = "reference", webp: bool = False,
               step_cache: float | None = None, speed: str = "exact", prompt_set=None,
               request: dict | None = None) -> GenerationJob:
    """Create a queued job from validated prompts and (Lora, multiplier) pairs, then enqueue it."""
    model_check(model)
    _check_queue_cap(owner)
    if not prompts or any(not item.get("prompt") for item in prompts):
        raise ApiError("NO_PROMPTS", "A job needs at least one prompt, and every prompt needs its text.")
    shas = [lora.sha256 for lora, _ in loras]
    if len(set(shas)) != len(shas):
        raise ApiError("LORA_DUPLICATE", "The same LoRA appears twice in the stack; give it one multiplier.")
    resolved = job_prompts_resolve(prompts, trigger_word=trigger_word, semantics=prompt_semantics,
                                name=loras[0][0].info.get("output_name") or loras[0][0].name if loras else None)
    job = GenerationJob.objects.create(
        owner=owner, model=model, priority=priority, scheduler=scheduler, prompt_semantics=prompt_semantics,
        webp=webp, step_cache=step_cache, speed=speed, prompt_set=prompt_set, prompts=resolved, request=request or {},
        progress={"prompt": 0, "prompts": len(resolved), "step": 0,
                  "steps": resolved[0]["sample_steps"], "fraction": 0.0},
    )
    JobLora.objects.bulk_create(
        JobLora(job=job, lora=lora, position=i, multiplier=multiplier, sha256=lora.sha256, name=lora.name)
        for i, (lora, multiplier) in enumerate(loras))
    job_enqueue(job=job)
    return job


def _check_queue_cap(owner) -> None:
    if owner is None or owner.is_staff:
        return
    queued = GenerationJob.objects.filter(owner=owner, status=JobStatus.QUEUED).count()
    if queued >= settings.MAX_QUEUED_JOBS_PER_USER:
        raise ApiError("TOO_MANY_QUEUED_JOBS",
                       f"You have {queued} jobs waiting; at most {settings.MAX_QUEUED_JOBS_PER_USER} may be queued.",
                       status_code=status.HTTP_429_TOO_MANY_REQUESTS)


def job_prompts_resolve(prompts: list[dict], **options) -> list[dict]:
    """Prompts as they will render (see resolve_prompt); a bad inline flag is INVALID_PROMPT_FLAG."""
    resolved = []
    for index, item in enumerate(prompts):
        try:
            resolved.append(resolve_prompt(item, index=index, **options).as_dict())
        except PromptError as exc:
            raise ApiError("INVALID_PROMPT_FLAG", exc.message,
                           details={f"prompts[{index}].{exc.field}": [{"code": "invalid", "message": exc.message}]}
                           ) from None
    return resolved


def job_rerun(*, job: GenerationJob, owner) -> GenerationJob:
    """A new job with the same resolved prompts (seeds included), LoRA stack and scheduler."""
    loras = []
    for job_lora in job.job_loras.select_related("lora"):
        if job_lora.lora is None or not lora_list(user=owner).filter(pk=job_lora.lora_id).exists():
            raise Conflict("LORA_MISSING", f"LoRA {job_lora.name} is gone or not yours to use; cannot re-run.")
        loras.append((job_lora.lora, job_lora.multiplier))
    return job_submit(owner=owner, model=job.model, loras=loras, prompts=job.prompts, priority=job.priority,
                      scheduler=job.scheduler, webp=job.webp, step_cache=job.step_cache, speed=job.speed,
                      prompt_set=job.prompt_set, request={"rerun_of": str(job.id)})


def _locked(job_id) -> GenerationJob | None:
    return GenerationJob.objects.select_for_update().filter(pk=job_id).first()


@transaction.atomic
def job_start(*, job_id: str | uuid.UUID, worker: str) -> GenerationJob | None:
    """Claim a queued job for `worker`; None when it is not queued any more (duplicate or canceled)."""
    job = _locked(job_id)
    if job is None or job.status != JobStatus.QUEUED:
        return None
    job.status = JobStatus.RUNNING
    job.attempts += 1
    job.worker = worker
    job.started_at = job.heartbeat_at = timezone.now()
    job.save(update_fields=["status", "attempts", "worker", "started_at", "heartbeat_at", "updated_at"])
    return job


def _running(job: GenerationJob):
    """The job row while it is still this attempt's: running, on this worker, not retried since."""
    return GenerationJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING, worker=job.worker,
                                        attempts=job.attempts)


def job_is_active(*, job: GenerationJob) -> bool:
    """Still this worker's to render (not canceled, not taken over after a presumed death)."""
    return _running(job).exists()


def job_heartbeat(*, job: GenerationJob) -> bool:
    return bool(_running(job).update(heartbeat_at=timezone.now()))


def job_report_progress(*, job: GenerationJob, prompt_index: int, step: int, steps: int) -> bool:
    """Store progress; returns False when the job is no longer this worker's (the worker should stop)."""
    total = sum(p["sample_steps"] for p in job.prompts)
    done = sum(p["sample_steps"] for p in job.prompts[:prompt_index]) + step
    job.progress = {"prompt": prompt_index, "prompts": len(job.prompts), "step": step, "steps": steps,
                    "fraction": round(done / total, 4)}
    now = timezone.now()
    return bool(_running(job).update(progress=job.progress, heartbeat_at=now, updated_at=now))


def job_requeue(*, job_id, reason: str) -> GenerationJob | None:
    """Put a running job back in the queue (its worker died or must exit), or fail it with
    WORKER_LOST once it has used up JOB_MAX_ATTEMPTS."""
    with transaction.atomic():
        job = _locked(job_id)
        if job is None or job.status != JobStatus.RUNNING:
            return job
        if job.attempts >= settings.JOB_MAX_ATTEMPTS:
            job.status, job.finished_at = JobStatus.FAILED, timezone.now()
            job.error_code = "WORKER_LOST"
            job.error_message = f"Gave up after {job.attempts} attempts; last: {reason}"
        else:
            job.status, job.worker = JobStatus.QUEUED, ""
            job.error_message = f"Requeued: {reason}"
            job_enqueue(job=job)
        job.save()
        log.warning("job %s: %s -> %s", job.pk, reason, job.status)
        return job


def jobs_reconcile(*, broker_job_ids: set[str] | None, dead_worker: str | None = None) -> dict:
    """Make the queue match the database: requeue running jobs whose worker is gone (stale heartbeat,
    or `dead_worker`, a restarted worker's own name) and re-send queued jobs whose message is lost."""
    now = timezone.now()
    stale_before = now - timedelta(seconds=settings.JOB_STALE_AFTER_S)
    running = GenerationJob.objects.filter(status=JobStatus.RUNNING)
    lost = running.filter(heartbeat_at__lt=stale_before)
    if dead_worker:
        lost = lost | running.filter(worker=dead_worker)
    requeued = [job_requeue(job_id=pk, reason="worker stopped responding")
                for pk in lost.values_list("pk", flat=True)]
    resent = 0
    if broker_job_ids is not None:
        settled_before = now - timedelta(seconds=settings.JOB_RECONCILE_GRACE_S)
        for job in GenerationJob.objects.filter(status=JobStatus.QUEUED, updated_at__lte=settled_before):
            if str(job.pk) not in broker_job_ids:
                with transaction.atomic():
                    job_enqueue(job=job)
                resent += 1
    return {"requeued": len(requeued), "resent": resent}


def job_add_output(*, job: GenerationJob, index: int, video: str, poster: str, webp: str, params: dict,
                   scheduler: str, record: dict) -> JobOutput:
    output, _ = JobOutput.objects.update_or_create(
        job=job, index=index,
        defaults=dict(video=video, poster=poster, webp=webp, width=params["width"], height=params["height"],
                      num_frames=params["num_frames"], fps=params["fps"], seed=params["seed"],
                      scheduler=scheduler, record=record))
    return output


def _finish(job_id, status: str, *, from_states, attempt: GenerationJob | None = None,
            **fields) -> GenerationJob | None:
    """Move a job to a final state; with `attempt`, only if that attempt still owns the job."""
    with transaction.atomic():
        job = _locked(job_id)
        if job is None or job.status not in from_states:
            return job
        if attempt is not None and (job.worker, job.attempts) != (attempt.worker, attempt.attempts):
            return job
        job.status = status
        job.finished_at = timezone.now()
        for name, value in fields.items():
            setattr(job, name, value)
        job.save()
        return job


def job_succeed(*, job: GenerationJob, timings: dict) -> GenerationJob | None:
    progress = {**job.progress, "fraction": 1.0}
    return _finish(job.pk, JobStatus.SUCCEEDED, from_states=[JobStatus.RUNNING], attempt=job, timings=timings,
                   progress=progress)


def job_fail(*, job: GenerationJob, code: str, message: str, timings: dict | None = None) -> GenerationJob | None:
    log.warning("job %s failed: %s %s", job.pk, code, message)
    return _finish(job.pk, JobStatus.FAILED, from_states=[JobStatus.RUNNING], attempt=job,
                   error_code=code, error_message=message[:2000], timings=timings or job.timings)


def job_cancel(*, job: GenerationJob, actor=None) -> GenerationJob:
    """Cancel a queued or running job; canceling a canceled job is a no-op, a finished one a conflict."""
    require_manage(actor, job, what="job")
    updated = _finish(job.pk, JobStatus.CANCELED, from_states=[JobStatus.QUEUED, JobStatus.RUNNING],
                      error_code="CANCELED", error_message="Canceled by request.")
    if updated.status != JobStatus.CANCELED:
        raise Conflict("JOB_NOT_CANCELABLE", f"The job already {updated.status}.", details={"status": updated.status})
    return updated


@transaction.atomic
def job_retry(*, job: GenerationJob, actor=None) -> GenerationJob:
    """Queue a failed or canceled job again, dropping whatever it had produced."""
    require_manage(actor, job, what="job")
    job = _locked(job.pk)
    _check_queue_cap(job.owner)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELED):
        raise Conflict("JOB_NOT_RETRYABLE", f"Only failed or canceled jobs can be retried; this one is {job.status}.",
                       details={"status": job.status})
    _delete_outputs(job)
    job.status, job.attempts, job.worker, job.timings = JobStatus.QUEUED, 0, "", {}
    job.error_code = job.error_message = ""
    job.started_at = job.finished_at = job.heartbeat_at = None
    job.progress = {**job.progress, "prompt": 0, "step": 0, "fraction": 0.0}
    job.save()
    job_enqueue(job=job)
    return job


def job_delete(*, job: GenerationJob, actor=None) -> None:
    """Delete a finished job with its files; active jobs must be canceled first."""
    require_manage(actor, job, what="job")
    if not job.is_finished:
        raise Conflict("JOB_ACTIVE", "Cancel the job before deleting it.", details={"status": job.status})
    _delete_outputs(job)
    job.delete()


def _delete_outputs(job: GenerationJob) -> None:
    """Remove a job's output files from storage, then their rows."""
    for output in job.outputs.all():
        for field in (output.video, output.poster, output.webp):
            if field:
                field.delete(save=False)
    job.outputs.all().delete()
