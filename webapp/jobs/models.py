"""Generation jobs: the row is the truth about a render, the worker only moves it forward."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from workers.pipeline.params import PROMPT_SEMANTICS


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class Scheduler(models.TextChoices):
    AUTO = "auto", "auto (as the LoRA's ai-toolkit previews)"
    EULER = "euler", "flow-match Euler, shift 3"
    UNIPC = "unipc", "UniPC flow, shift 3"
    DISTILL = "distill", "distill (step-distill LoRAs: flow-match Euler, shift 5)"


class Speed(models.TextChoices):
    EXACT = "exact", "exact (bf16, same math as diffusers)"
    FAST = "fast", "fast (fp8 transformer, LoRAs merged; lossy)"


class Preset(models.TextChoices):
    STANDARD = "standard", "standard (the request's steps and guidance)"
    DRAFT = "draft", "draft (the deployment's step-distill LoRA: 4 steps, no CFG)"


WEBHOOK_EVENTS = ("start", "progress", "output", "completed")


def default_webhook_events() -> list[str]:
    return ["completed"]


class GenerationJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    model = models.CharField(max_length=50, default="wan21_14b")
    status = models.CharField(max_length=20, choices=JobStatus.choices, default=JobStatus.QUEUED, db_index=True)
    priority = models.SmallIntegerField(default=0, help_text="0-9; higher starts first.")
    scheduler = models.CharField(max_length=10, choices=Scheduler.choices, default=Scheduler.AUTO)
    prompt_semantics = models.CharField(
        max_length=20,
        choices=[(s, s) for s in PROMPT_SEMANTICS],
        default="reference",
        help_text="ai-toolkit: inline --flags in prompts, [trigger]/[name] always replaced.",
    )
    webp = models.BooleanField(default=False, help_text="Also write the animated WebP of training previews.")
    step_cache = models.FloatField(
        null=True, blank=True, help_text="Opt-in FirstBlockCache threshold (faster, lossy); empty: exact."
    )
    speed = models.CharField(max_length=10, choices=Speed.choices, default=Speed.EXACT)
    preset = models.CharField(max_length=10, choices=Preset.choices, default=Preset.STANDARD)
    webhook = models.CharField(
        max_length=1000, blank=True, default="", help_text="Where events of this job are POSTed (Standard Webhooks)."
    )
    webhook_events_filter = models.JSONField(
        default=default_webhook_events,
        blank=True,
        help_text=f"Which events to send: any of {', '.join(WEBHOOK_EVENTS)}.",
    )
    idempotency_key = models.CharField(
        max_length=200, blank=True, default="", help_text="The submit's Idempotency-Key header (unique per owner)."
    )
    prompt_set = models.ForeignKey(
        "prompts.PromptSet",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="jobs",
        help_text="Where the prompts were copied from.",
    )
    sweep = models.ForeignKey(
        "sweeps.Sweep",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="jobs",
        help_text="A sweep's cell.",
    )
    sweep_cell = models.JSONField(
        null=True, blank=True, help_text='Where in its sweep: {"row", "column", "layer", "axes": {field: value}}.'
    )
    prompts = models.JSONField(help_text="Resolved prompts as they render (defaults, seed, snapping applied).")
    request = models.JSONField(default=dict, blank=True, help_text="The request as submitted (no secrets).")
    progress = models.JSONField(default=dict, blank=True)
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    timings = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last sign of life from its worker.")
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "-priority", "created_at"])]
        constraints = [
            # A repeated Idempotency-Key finds the first job; two racing submits cannot both insert.
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="one_job_per_idempotency_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED

    @property
    def is_stale(self) -> bool:
        """Running, but its worker has not been heard from for JOB_STALE_AFTER_S."""
        if self.status != JobStatus.RUNNING:
            return False
        last = self.heartbeat_at or self.started_at
        return last is None or (timezone.now() - last).total_seconds() > settings.JOB_STALE_AFTER_S

    @property
    def percent(self) -> int:
        return int(100 * self.progress.get("fraction", 1.0 if self.status == JobStatus.SUCCEEDED else 0.0))

    def draft_lora(self, job_loras: list["JobLora"]) -> "JobLora | None":
        """The draft preset's step-distill LoRA among this job's stack: the last (`job_spec` adds it there)."""
        return job_loras[-1] if self.preset == Preset.DRAFT and job_loras else None


class JobLora(models.Model):
    """One LoRA of a job's stack, with its multiplier; sha256 kept even if the LoRA is deleted later.
    A LoRA named by URL is `pending` until the CPU queue has fetched and registered it."""

    job = models.ForeignKey(GenerationJob, on_delete=models.CASCADE, related_name="job_loras")
    lora = models.ForeignKey("loras.Lora", null=True, on_delete=models.SET_NULL, related_name="job_uses")
    url = models.CharField(
        max_length=1000,
        blank=True,
        help_text="An https URL the CPU queue fetches before the job renders (lora empty till then).",
    )
    position = models.PositiveSmallIntegerField(default=0)
    multiplier = models.FloatField(default=1.0)
    sha256 = models.CharField(max_length=64)
    name = models.CharField(max_length=200)

    class Meta:
        ordering = ["position"]

    def __str__(self) -> str:
        return f"{self.name or self.url} @ {self.multiplier:g}"

    @property
    def pending(self) -> bool:
        return self.lora_id is None and bool(self.url) and not self.sha256


class JobOutput(models.Model):
    """One rendered prompt; created only once its files are completely stored."""

    job = models.ForeignKey(GenerationJob, on_delete=models.CASCADE, related_name="outputs")
    index = models.PositiveIntegerField()
    video = models.FileField(max_length=300)
    poster = models.FileField(max_length=300, blank=True)
    webp = models.FileField(max_length=300, blank=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    num_frames = models.PositiveIntegerField()
    fps = models.PositiveIntegerField()
    seed = models.BigIntegerField()
    scheduler = models.CharField(max_length=20)
    record = models.JSONField(default=dict, help_text="Everything needed to reproduce this output.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="one_output_per_prompt")]

    def __str__(self) -> str:
        return f"Output {self.index + 1}: {self.width}x{self.height}, {self.num_frames} frames, seed {self.seed}"


class WebhookSecret(models.Model):
    """A user's webhook signing secret, shown as `whsec_<base64>` (Standard Webhooks)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_secret")
    key = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"webhook secret of {self.user}"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEvent(models.Model):
    """One event of a job for its webhook (an outbox row, written in the transaction of the change that
    causes it); the body is frozen when written, so every attempt sends the same bytes and id. It outlives its
    job (a deleted job's events are still delivered) and is signed with its owner's secret."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(
        GenerationJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="webhook_events"
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    event = models.CharField(max_length=20)
    url = models.CharField(max_length=1000)
    body = models.TextField()
    status = models.CharField(max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["status", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.message_id} {self.event} ({self.status})"

    @property
    def message_id(self) -> str:
        return f"msg_{self.id.hex}"


class WebhookAttempt(models.Model):
    """One POST of an event: the receiver's status code, or the error, and how long it took."""

    event = models.ForeignKey(WebhookEvent, on_delete=models.CASCADE, related_name="attempt_log")
    number = models.PositiveIntegerField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.CharField(max_length=500, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["number"]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error}"
