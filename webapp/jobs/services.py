"""Every change of a generation job: one submit path, and one table of the moves between states.

The web side submits, cancels and retries; the worker side starts, reports progress, adds outputs
and finishes. Every move of `status` is a row of `TRANSITIONS` and goes through `job_transition`,
which checks the state it starts from inside a row lock: a duplicate delivery or a late cancel
finds the job elsewhere and raises `IllegalTransition` (the worker's moves treat that as a no-op).

Every door that makes a job (both APIs, the admin, re-run) builds a `JobSpec` with `job_spec` and
hands it to `job_submit`; a new job option is one name in `JOB_OPTIONS`, one model field and one
field of `JobOptionsSerializer`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework import status

from webapp.core.catalog import DEFAULT_MODEL, model_check, model_size_check
from webapp.core.errors import ApiError, Conflict, NotFound
from webapp.core.permissions import require_manage
from webapp.loras.models import Lora
from webapp.loras.selectors import lora_list
from webapp.loras.services import lora_resolve
from webapp.prompts.models import PromptSet
from workers.broker import CPU_QUEUE, GPU_QUEUE
from workers.celery_app import app as celery_app
from workers.pipeline.params import DRAFT_GUIDANCE, DRAFT_STEPS, PromptError, resolve_prompt

from .models import FINISHED, GenerationJob, JobLora, JobOutput, JobStatus, Preset, Scheduler, default_webhook_events
from .selectors import job_lora_shown
from .webhooks import webhook_emit, webhook_url_check

log = logging.getLogger(__name__)
RENDER_TASK, FETCH_TASK = "workers.render_job", "workers.fetch_job_loras"
SETTLE_SWEEP_TASK = "workers.settle_sweep"  # webapp/sweeps/services.py sweep_settle, on the CPU queue
QUEUED, RUNNING, SUCCEEDED = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED
FAILED, CANCELED = JobStatus.FAILED, JobStatus.CANCELED


@dataclass(frozen=True)
class Transition:
    sources: frozenset[str]
    target: str
    by: str  # who may make this move
    refusal: str = "JOB_STATE_CONFLICT"  # the code of IllegalTransition for this action


# A job is created QUEUED (job_submit). Every later move of its status is one of these.
TRANSITIONS = {
    # action     from                           to         by
    "start": Transition(frozenset({QUEUED}), RUNNING, "a worker claiming a delivery"),
    "succeed": Transition(frozenset({RUNNING}), SUCCEEDED, "the attempt that owns it, all outputs stored"),
    "fail": Transition(frozenset({RUNNING}), FAILED, "the attempt that owns it (or its hard time limit)"),
    "requeue": Transition(frozenset({RUNNING}), QUEUED, "a worker that must exit; the reconciler (worker gone)"),
    "give_up": Transition(frozenset({RUNNING}), FAILED, "the reconciler, after JOB_MAX_ATTEMPTS (WORKER_LOST)"),
    "reject": Transition(frozenset({QUEUED}), FAILED, "the CPU queue, when a LoRA URL cannot be fetched"),
    "cancel": Transition(frozenset({QUEUED, RUNNING}), CANCELED, "its owner or staff", "JOB_NOT_CANCELABLE"),
    "retry": Transition(frozenset({FAILED, CANCELED}), QUEUED, "its owner or staff", "JOB_NOT_RETRYABLE"),
}
JOB_OPTIONS = (
    "priority",
    "scheduler",
    "prompt_semantics",
    "webp",
    "step_cache",
    "speed",
    "preset",
    "webhook",
    "webhook_events_filter",
)
IDEMPOTENCY_KEY_MAX = 200
# The webhook event a move emits (webapp/jobs/webhooks.py), in the move's own transaction.
EVENT_OF_TARGET = {RUNNING: "start", SUCCEEDED: "completed", FAILED: "completed", CANCELED: "completed"}


class IllegalTransition(Conflict):
    """The job is not in a state this action starts from (or no longer the acting attempt's)."""

    def __init__(self, action: str, job: GenerationJob):
        self.job = job
        allowed = " or ".join(sorted(TRANSITIONS[action].sources))
        super().__init__(
            TRANSITIONS[action].refusal,
            f"Cannot {action.replace('_', ' ')} a job that is {job.status}; only one that is {allowed}.",
            details={"status": job.status, "action": action},
        )


@contextlib.contextmanager
def job_transition(job_id, action: str, *, attempt: GenerationJob | None = None):
    """Move a job by one action of TRANSITIONS, in a transaction holding its row lock: yields the
    locked row for the caller to set the move's other fields, then saves it in its new state. With
    `attempt`, only while that attempt (worker and attempt number) still owns the job."""
    move = TRANSITIONS[action]
    with transaction.atomic():
        job = GenerationJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None:
            raise NotFound("JOB_NOT_FOUND", f"No job with id {job_id}.", details={"id": str(job_id)})
        if job.status not in move.sources or (
            attempt is not None and (job.worker, job.attempts) != (attempt.worker, attempt.attempts)
        ):
            raise IllegalTransition(action, job)
        job.status = move.target
        if move.target in FINISHED:
            job.finished_at = timezone.now()
        yield job
        job.save()
        if event := EVENT_OF_TARGET.get(move.target):
            webhook_emit(job=job, event=event)
        if job.sweep_id is not None:
            sweep_settle_enqueue(sweep_id=job.sweep_id)
        log.info("job %s: %s -> %s", job.pk, action, job.status)


def sweep_settle_enqueue(*, sweep_id) -> None:
    """Once the surrounding transaction commits, have the CPU queue settle a sweep: its status from its
    cells, its grids once every cell has finished. Sent by name, so jobs know nothing of the sweeps app;
    robust, as a lost message is the reconciler's to make up for."""
    sweep_id = str(sweep_id)

    def send():
        celery_app.send_task(SETTLE_SWEEP_TASK, args=[sweep_id], queue=CPU_QUEUE)

    transaction.on_commit(send, robust=True)


def job_enqueue(*, job: GenerationJob) -> None:
    """Send the job's id once the surrounding transaction commits: to the CPU queue while a LoRA
    named by URL is still to be fetched (job_fetch_loras), else to the GPU queue to render."""
    job_id, priority = str(job.id), job.priority
    fetch = any(job_lora.pending for job_lora in job.job_loras.all())
    task, queue = (FETCH_TASK, CPU_QUEUE) if fetch else (RENDER_TASK, GPU_QUEUE)

    def send():
        # kombu's Redis priorities run 0 (first) to 9 (last); jobs use 9 as the most urgent.
        # The task id starts with the job id so the reconciler can find the message (workers/broker.py).
        celery_app.send_task(
            task, args=[job_id], queue=queue, priority=9 - priority, task_id=f"{job_id}.{uuid.uuid4().hex[:12]}"
        )

    # robust: a broker outage must not turn a created job into a 500; the reconciler re-sends it.
    transaction.on_commit(send, robust=True)


def job_fetch_loras(*, job_id) -> str:
    """On the CPU queue: download and register a queued job's LoRAs named by URL (up to
    LORA_URL_MAX_BYTES each, never inside a web request), then queue it to render. A URL that
    cannot be fetched fails the job with its code; a retry fetches again."""
    job = GenerationJob.objects.filter(pk=job_id, status=QUEUED).first()
    if job is None:
        return "skipped"  # canceled meanwhile, or a duplicate delivery after the fetch
    job_loras = list(job.job_loras.all())
    draft = job.draft_lora(job_loras)  # the server's: registered with no owner
    for job_lora in [jl for jl in job_loras if jl.pending]:
        try:
            lora = lora_resolve(ref=job_lora.url, owner=None if job_lora is draft else job.owner)
            if job.job_loras.filter(sha256=lora.sha256).exclude(pk=job_lora.pk).exists():
                raise ApiError("LORA_DUPLICATE", "The same LoRA appears twice in the stack; give it one multiplier.")
        except ApiError as exc:
            with contextlib.suppress(IllegalTransition), job_transition(job.pk, "reject") as row:
                row.error_code, row.error_message = exc.code, exc.message
            return exc.code
        JobLora.objects.filter(pk=job_lora.pk).update(lora=lora, sha256=lora.sha256, name=lora.name)
    with transaction.atomic():
        job_enqueue(job=GenerationJob.objects.prefetch_related("job_loras").get(pk=job.pk))
    return "fetched"


@dataclass(frozen=True)
class JobSpec:
    """A new job, whichever door it came through (see `job_spec`)."""

    loras: list[tuple[Lora | str, float]]  # a str: an https URL the CPU queue fetches before rendering
    prompts: list[dict]
    options: dict  # a value for every name in JOB_OPTIONS
    model: str = DEFAULT_MODEL
    trigger_word: str | None = None
    prompt_set: PromptSet | None = None
    request: dict = field(default_factory=dict)  # what the client sent, as stored with the job
    prompt_overrides: dict = field(default_factory=dict)  # a preset's fixed values, over every prompt's own


def job_spec(
    *,
    owner,
    loras: list[tuple[Lora | str, float | None]],
    options: dict,
    prompts: list[dict] | None = None,
    prompt_set: PromptSet | int | None = None,
    model: str = DEFAULT_MODEL,
    trigger_word: str | None = None,
    request: dict | None = None,
) -> JobSpec:
    """Resolve what a door hands over into a JobSpec: LoRAs as references (id, name, sha256, path under
    LORA_ROOT, URL) or rows, each with a multiplier or None for its default; prompts, or a prompt set
    (id or row) whose trigger word applies unless the request gives one; options by JOB_OPTIONS name
    (missing ones take the model's defaults). The draft preset is applied here (`_draft_preset`)."""
    if prompt_set is not None and not isinstance(prompt_set, PromptSet):
        found = PromptSet.objects.prefetch_related("items").filter(pk=prompt_set).first()
        if found is None:
            raise NotFound("PROMPT_SET_NOT_FOUND", f"No prompt set with id {prompt_set}.")
        prompt_set = found
    if prompt_set is not None:
        prompts = prompt_set_items(prompt_set, preset=options.get("preset"))
        trigger_word = trigger_word or prompt_set.trigger_word
    _check_prompt_count(len(prompts or []))
    overrides = {}
    if options.get("preset") == Preset.DRAFT:
        loras, prompts, options, overrides = _draft_preset(loras=loras, prompts=prompts, options=options)
    stack = []
    for ref, multiplier in loras:
        lora = ref if isinstance(ref, Lora) else lora_resolve(ref=ref, owner=owner, fetch=False) or ref
        default = lora.default_multiplier if isinstance(lora, Lora) else 1.0
        stack.append((lora, default if multiplier is None else multiplier))
    defaults = {name: GenerationJob._meta.get_field(name).get_default() for name in JOB_OPTIONS}
    return JobSpec(
        loras=stack,
        prompts=list(prompts or []),
        options={**defaults, **{name: options[name] for name in JOB_OPTIONS if name in options}},
        model=model,
        trigger_word=trigger_word,
        prompt_set=prompt_set,
        request=request or {},
        prompt_overrides=overrides,
    )


def prompt_set_items(prompt_set, *, preset: str | None) -> list[dict]:
    """A prompt set's prompts as request items; a draft drops their steps, which are the set's training
    previews' (ai-toolkit's 20 by default), so each prompt gets the draft's own."""
    items = prompt_set.request_items()
    if preset == Preset.DRAFT:
        items = [{**item, "sample_steps": None} for item in items]
    return items


def _draft_preset(*, loras: list, prompts: list[dict] | None, options: dict) -> tuple[list, list, dict, dict]:
    """The draft preset, for a step-distill LoRA (LightX2V's StepDistill-CfgDistill): DRAFT_LORA at
    DRAFT_LORA_MULTIPLIER after the request's LoRAs, DRAFT_STEPS steps for every prompt that names no
    steps, guidance DRAFT_GUIDANCE for every prompt (CFG is distilled into the LoRA), the distill
    scheduler. Returns the LoRAs, prompts and options, and the values fixed over every prompt's own.
    A re-run copies the stack and prompts as stored, so nothing is added twice."""
    ref, draft = settings.DRAFT_LORA, None
    refusal = "This server has no draft LoRA configured (DRAFT_LORA); submit with preset 'standard'."
    if ref:
        try:
            # the server's, whoever asks first: no owner, so only staff may delete or change it
            draft = lora_resolve(ref=ref, fetch=False) or ref  # a URL: fetched before rendering
        except ApiError as exc:
            refusal = f"This server's draft LoRA (DRAFT_LORA) cannot be used: {exc.message}"
    if draft is None:
        details = {"preset": [{"code": "not_configured", "message": refusal}]}
        raise ApiError("DRAFT_NOT_CONFIGURED", refusal, details=details)
    steps = {"sample_steps": DRAFT_STEPS}
    return (
        [*loras, (draft, settings.DRAFT_LORA_MULTIPLIER)],
        [item if item.get("sample_steps") is not None else {**item, **steps} for item in prompts or []],
        {**options, "scheduler": Scheduler.DISTILL},
        {"guidance_scale": DRAFT_GUIDANCE},
    )


def job_spec_from_request(*, owner, data: dict, request: dict) -> JobSpec:
    """A JobSpec from a request the resource API's JobCreateSerializer validated (the API, the submit page)."""
    return job_spec(
        owner=owner,
        loras=[(item["lora"], item.get("multiplier")) for item in data["loras"]],
        options=data,
        prompts=data.get("prompts"),
        prompt_set=data.get("prompt_set"),
        model=data["model"],
        trigger_word=data.get("trigger_word"),
        request=request,
    )


def idempotency_key_check(value: str | None) -> str:
    """The Idempotency-Key header as stored ("" for none); longer than IDEMPOTENCY_KEY_MAX is refused."""
    value = (value or "").strip()
    if len(value) > IDEMPOTENCY_KEY_MAX:
        raise ApiError(
            "IDEMPOTENCY_KEY_TOO_LONG",
            f"The Idempotency-Key header may have at most {IDEMPOTENCY_KEY_MAX} characters; this one has {len(value)}.",
        )
    return value


def job_for_idempotency_key(*, owner, key: str) -> GenerationJob | None:
    """The job `owner` already submitted with this Idempotency-Key (its repeat returns it), if any."""
    if not key or owner is None:
        return None
    return GenerationJob.objects.filter(owner=owner, idempotency_key=key).first()


@transaction.atomic
def job_submit(*, owner, spec: JobSpec, idempotency_key: str = "") -> GenerationJob:
    """Create a queued job from a JobSpec, then enqueue it. Every door's limits hold here: at most
    JOB_MAX_PROMPTS prompts, and priorities from PRIORITY_STAFF_ONLY_FROM for staff only.
    With an idempotency key the owner used before, the first job instead, with `replayed` set
    (the unique constraint decides a race); a new job has `replayed` False."""
    if existing := job_for_idempotency_key(owner=owner, key=idempotency_key):
        existing.replayed = True
        return existing
    model_check(spec.model)
    _check_priority(owner, spec.options["priority"])
    _check_queue_cap(owner)
    prompts, loras = spec.prompts, spec.loras
    if not prompts or any(not item.get("prompt") for item in prompts):
        raise ApiError("NO_PROMPTS", "A job needs at least one prompt, and every prompt needs its text.")
    _check_prompt_count(len(prompts))
    keys = [lora.sha256 if isinstance(lora, Lora) else lora for lora, _ in loras]
    if len(set(keys)) != len(keys):
        raise ApiError("LORA_DUPLICATE", "The same LoRA appears twice in the stack; give it one multiplier.")
    first = loras[0][0] if loras else None
    name = first.info.get("output_name") or first.name if isinstance(first, Lora) else first  # [name]
    # [trigger]: the request's trigger word, else that of the stack's first LoRA that has one.
    trigger_word = spec.trigger_word or next(
        (lora.trigger_word for lora, _ in loras if isinstance(lora, Lora) and lora.trigger_word), None
    )
    resolved = job_prompts_resolve(
        prompts,
        trigger_word=trigger_word,
        semantics=spec.options["prompt_semantics"],
        name=name,
        overrides=spec.prompt_overrides,
    )
    model_size_check(spec.model, resolved)
    if spec.options.get("webhook"):
        webhook_url_check(url=spec.options["webhook"])
    try:
        with transaction.atomic():  # a savepoint: a racing submit with the same key leaves this one usable
            job = GenerationJob.objects.create(
                owner=owner,
                model=spec.model,
                prompt_set=spec.prompt_set,
                prompts=resolved,
                request=spec.request,
                idempotency_key=idempotency_key if owner is not None else "",
                progress={
                    "prompt": 0,
                    "prompts": len(resolved),
                    "step": 0,
                    "steps": resolved[0]["sample_steps"],
                    "fraction": 0.0,
                },
                **spec.options,
            )
    except IntegrityError:
        if existing := job_for_idempotency_key(owner=owner, key=idempotency_key):
            existing.replayed = True
            return existing
        raise
    job.replayed = False
    JobLora.objects.bulk_create(
        JobLora(job=job, lora=lora, position=i, multiplier=multiplier, sha256=lora.sha256, name=lora.name)
        if isinstance(lora, Lora)
        else JobLora(job=job, url=lora, position=i, multiplier=multiplier, name=lora)
        for i, (lora, multiplier) in enumerate(loras)
    )
    job_enqueue(job=job)
    return job


def _check_queue_cap(owner) -> None:
    if owner is None or owner.is_staff:
        return
    queued = GenerationJob.objects.filter(owner=owner, status=JobStatus.QUEUED).count()
    if queued >= settings.MAX_QUEUED_JOBS_PER_USER:
        raise ApiError(
            "TOO_MANY_QUEUED_JOBS",
            f"You have {queued} jobs waiting; at most {settings.MAX_QUEUED_JOBS_PER_USER} may be queued.",
            status_code=status.HTTP_429_TOO_MANY_REQUESTS,
        )


def _check_prompt_count(count: int) -> None:
    if count > settings.JOB_MAX_PROMPTS:
        message = f"A job may have at most {settings.JOB_MAX_PROMPTS} prompts; this one has {count}."
        raise ApiError("TOO_MANY_PROMPTS", message, details={"prompts": [{"code": "max_length", "message": message}]})


def job_priority_allowed(user, priority: int) -> int:
    """The highest priority `user` may give a job, at most `priority`: priorities from
    PRIORITY_STAFF_ONLY_FROM up are for staff (and jobs without an owner, made by commands)."""
    if user is None or user.is_staff:
        return priority
    return min(priority, settings.PRIORITY_STAFF_ONLY_FROM - 1)


def _check_priority(owner, priority: int) -> None:
    if job_priority_allowed(owner, priority) != priority:
        allowed = settings.PRIORITY_STAFF_ONLY_FROM - 1
        message = f"Priorities above {allowed} are for staff; use 0 to {allowed}."
        raise ApiError(
            "PRIORITY_NOT_ALLOWED",
            message,
            details={"priority": [{"code": "not_allowed", "message": message}]},
            status_code=status.HTTP_403_FORBIDDEN,
        )


def job_prompts_resolve(prompts: list[dict], **options) -> list[dict]:
    """Prompts as they will render (see resolve_prompt); a bad inline flag is INVALID_PROMPT_FLAG."""
    resolved = []
    for index, item in enumerate(prompts):
        try:
            resolved.append(resolve_prompt(item, index=index, **options).as_dict())
        except PromptError as exc:
            raise ApiError(
                "INVALID_PROMPT_FLAG",
                exc.message,
                details={f"prompts[{index}].{exc.field}": [{"code": "invalid", "message": exc.message}]},
            ) from None
    return resolved


def job_rerun(*, job: GenerationJob, owner) -> GenerationJob:
    """A new job with the same resolved prompts (seeds included), LoRA stack and options; the
    priority only as high as `owner` may give (see job_priority_allowed), and another owner's webhook
    left out (its endpoint is theirs, and deliveries would be signed with the wrong secret)."""
    loras = []
    for job_lora in job.job_loras.select_related("lora"):
        if job_lora.lora is None or not lora_list(user=owner).filter(pk=job_lora.lora_id).exists():
            shown = job_lora_shown(job_lora, job=job, user=owner).name  # a private LoRA stays unnamed
            raise Conflict("LORA_MISSING", f"LoRA {shown} is gone or not yours to use; cannot re-run.")
        loras.append((job_lora.lora, job_lora.multiplier))
    spec = JobSpec(
        loras=loras,
        prompts=job.prompts,
        options={
            **{name: getattr(job, name) for name in JOB_OPTIONS},
            "priority": job_priority_allowed(owner, job.priority),
            **({} if _same_owner(job, owner) else {"webhook": "", "webhook_events_filter": default_webhook_events()}),
        },
        model=job.model,
        prompt_set=job.prompt_set,
        request={"rerun_of": str(job.id)},
    )
    return job_submit(owner=owner, spec=spec)


def _same_owner(job: GenerationJob, user) -> bool:
    return user is not None and job.owner_id == user.pk


def job_start(*, job_id: str | uuid.UUID, worker: str) -> GenerationJob | None:
    """Claim a queued job for `worker`; None when it is not queued any more (duplicate or canceled)."""
    try:
        with job_transition(job_id, "start") as job:
            job.attempts += 1
            job.worker = worker
            job.started_at = job.heartbeat_at = timezone.now()
        return job
    except (IllegalTransition, NotFound):
        return None


def _running(job: GenerationJob):
    """The job row while it is still this attempt's: running, on this worker, not retried since."""
    return GenerationJob.objects.filter(pk=job.pk, status=JobStatus.RUNNING, worker=job.worker, attempts=job.attempts)


def job_is_active(*, job: GenerationJob) -> bool:
    """Still this worker's to render (not canceled, not taken over after a presumed death)."""
    return _running(job).exists()


def job_heartbeat(*, job: GenerationJob) -> bool:
    return bool(_running(job).update(heartbeat_at=timezone.now()))


def job_report_progress(*, job: GenerationJob, prompt_index: int, step: int, steps: int) -> bool:
    """Store progress; returns False when the job is no longer this worker's (the worker should stop)."""
    total = sum(p["sample_steps"] for p in job.prompts)
    done = sum(p["sample_steps"] for p in job.prompts[:prompt_index]) + step
    job.progress = {
        "prompt": prompt_index,
        "prompts": len(job.prompts),
        "step": step,
        "steps": steps,
        "fraction": round(done / total, 4),
    }
    now = timezone.now()
    with transaction.atomic():
        updated = bool(_running(job).update(progress=job.progress, heartbeat_at=now, updated_at=now))
        if updated:
            webhook_emit(job=job, event="progress")  # at most every WEBHOOK_PROGRESS_INTERVAL_S
    return updated


def job_requeue(*, job_id, reason: str) -> GenerationJob | None:
    """Put a running job back in the queue (its worker died or must exit), or fail it with
    WORKER_LOST once it has used up JOB_MAX_ATTEMPTS; the job as it is now (None if gone)."""
    job = GenerationJob.objects.filter(pk=job_id).first()
    if job is None or job.status != RUNNING:
        return job
    try:
        if job.attempts >= settings.JOB_MAX_ATTEMPTS:
            with job_transition(job_id, "give_up") as job:
                job.error_code = "WORKER_LOST"
                job.error_message = f"Gave up after {job.attempts} attempts; last: {reason}"
        else:
            with job_transition(job_id, "requeue") as job:
                job.worker, job.error_message = "", f"Requeued: {reason}"
                job_enqueue(job=job)
    except IllegalTransition as exc:  # moved meanwhile (finished, canceled, requeued)
        return exc.job
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
    requeued = [job_requeue(job_id=pk, reason="worker stopped responding") for pk in lost.values_list("pk", flat=True)]
    resent = 0
    if broker_job_ids is not None:
        settled_before = now - timedelta(seconds=settings.JOB_RECONCILE_GRACE_S)
        for job in GenerationJob.objects.filter(status=JobStatus.QUEUED, updated_at__lte=settled_before):
            if str(job.pk) not in broker_job_ids:
                with transaction.atomic():
                    job_enqueue(job=job)
                resent += 1
    return {"requeued": len(requeued), "resent": resent}


def job_add_output(
    *, job: GenerationJob, index: int, video: str, poster: str, webp: str, params: dict, scheduler: str, record: dict
) -> JobOutput | None:
    """Store one output of the attempt `job` and announce it; None, storing nothing, once the job is no longer
    the attempt's (canceled or retried meanwhile), so no output or event follows its end."""
    with transaction.atomic():
        row = _running(job).select_for_update().first()
        if row is None:
            return None
        output = _store_output(
            job=row,
            index=index,
            video=video,
            poster=poster,
            webp=webp,
            params=params,
            scheduler=scheduler,
            record=record,
        )
        webhook_emit(job=row, event="output")
    return output


def _store_output(*, job, index, video, poster, webp, params, scheduler, record) -> JobOutput:
    output, _ = JobOutput.objects.update_or_create(
        job=job,
        index=index,
        defaults=dict(
            video=video,
            poster=poster,
            webp=webp,
            width=params["width"],
            height=params["height"],
            num_frames=params["num_frames"],
            fps=params["fps"],
            seed=params["seed"],
            scheduler=scheduler,
            record=record,
        ),
    )
    return output


def job_succeed(*, job: GenerationJob, timings: dict) -> GenerationJob | None:
    """The attempt `job` stored every output; a no-op when it no longer owns the job."""
    with contextlib.suppress(IllegalTransition, NotFound), job_transition(job.pk, "succeed", attempt=job) as row:
        row.timings, row.progress = timings, {**row.progress, "fraction": 1.0}
        return row
    return None


def job_fail(*, job: GenerationJob, code: str, message: str, timings: dict | None = None) -> GenerationJob | None:
    """The attempt `job` failed with `code`; a no-op when it no longer owns the job."""
    log.warning("job %s failed: %s %s", job.pk, code, message)
    with contextlib.suppress(IllegalTransition, NotFound), job_transition(job.pk, "fail", attempt=job) as row:
        row.error_code, row.error_message = code, message[:2000]
        row.timings = timings or row.timings
        return row
    return None


def job_cancel(*, job: GenerationJob, actor=None) -> GenerationJob:
    """Cancel a queued or running job; canceling a canceled job is a no-op, a finished one a conflict."""
    require_manage(actor, job, what="job")
    try:
        with job_transition(job.pk, "cancel") as row:
            row.error_code, row.error_message = "CANCELED", "Canceled by request."
        return row
    except IllegalTransition as exc:
        if exc.job.status == CANCELED:
            return exc.job
        raise


def job_retry(*, job: GenerationJob, actor=None) -> GenerationJob:
    """Queue a failed or canceled job again, dropping whatever it had produced; its priority only as
    high as `actor` may give (see job_priority_allowed)."""
    require_manage(actor, job, what="job")
    _check_queue_cap(job.owner)
    _check_prompt_count(len(job.prompts))
    with job_transition(job.pk, "retry") as row:
        row.priority = job_priority_allowed(actor, row.priority)
        _delete_outputs(row)
        row.attempts, row.worker, row.timings = 0, "", {}
        row.error_code = row.error_message = ""
        row.started_at = row.finished_at = row.heartbeat_at = None
        row.progress = {**row.progress, "prompt": 0, "step": 0, "fraction": 0.0}
        job_enqueue(job=row)
    return row


def job_delete(*, job: GenerationJob, actor=None) -> None:
    """Delete a finished job with its files; active jobs must be canceled first."""
    require_manage(actor, job, what="job")
    if not job.is_finished:
        raise Conflict("JOB_ACTIVE", "Cancel the job before deleting it.", details={"status": job.status})
    _delete_outputs(job)
    job.delete()
    if job.sweep_id is not None:  # its sweep's grids are made again without it
        sweep_settle_enqueue(sweep_id=job.sweep_id)


def _delete_outputs(job: GenerationJob) -> None:
    """Remove a job's output files from storage, then their rows."""
    for output in job.outputs.all():
        for file in (output.video, output.poster, output.webp):
            if file:
                file.delete(save=False)
    job.outputs.all().delete()
