"""Job representations shared by the resource API and the reference-compatible API."""

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from webapp.core.catalog import DEFAULT_MODEL, MAX_LORAS, MULTIPLIER_HIGH, MULTIPLIER_LOW
from webapp.core.errors import ApiError
from webapp.core.permissions import can_manage
from webapp.prompts.serializers import PromptFieldsSerializer
from workers.pipeline.params import PROMPT_SEMANTICS

from .models import WEBHOOK_EVENTS, GenerationJob, JobLora, JobOutput, Preset, Scheduler, Speed, default_webhook_events
from .selectors import job_lora_shown, job_record_shown
from .services import JOB_OPTIONS


def prompts_field():
    return PromptFieldsSerializer(many=True, allow_empty=False, max_length=settings.JOB_MAX_PROMPTS)


def output_urls(output: JobOutput, request) -> dict:
    build = request.build_absolute_uri if request else (lambda u: u)

    def url(kind):
        return build(reverse("output-file", kwargs={"pk": output.pk, "kind": kind}))

    return {
        "url": url("video"),
        "poster_url": url("poster") if output.poster else None,
        "webp_url": url("webp") if output.webp else None,
    }


class JobOptionsSerializer(serializers.Serializer):
    """Options beyond the reference schema, accepted by both APIs."""

    priority = serializers.IntegerField(min_value=0, max_value=9, default=0)
    scheduler = serializers.ChoiceField(choices=Scheduler.choices, default=Scheduler.AUTO)
    prompt_semantics = serializers.ChoiceField(choices=PROMPT_SEMANTICS, default="reference")
    webp = serializers.BooleanField(default=False)
    step_cache = serializers.FloatField(
        min_value=0.01,
        max_value=1.0,
        required=False,
        allow_null=True,
        default=None,
        help_text="Opt into step caching (FirstBlockCache) at this threshold: faster, "
        "not exact. Leave empty for exact rendering.",
    )
    speed = serializers.ChoiceField(
        choices=Speed.choices,
        default=Speed.EXACT,
        help_text="fast: fp8 transformer with the LoRAs merged into it, about 1.4x "
        "faster per step, not exact. Not combinable with step_cache.",
    )
    preset = serializers.ChoiceField(
        choices=Preset.choices,
        default=Preset.STANDARD,
        help_text="draft: a quick look with the server's step-distill LoRA (DRAFT_LORA) after yours: 4 steps "
        "where a prompt gives none (a prompt set's stored steps do not count), guidance 1, the distill scheduler. "
        "DRAFT_NOT_CONFIGURED where none is set.",
    )

    webhook = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        allow_null=True,
        default="",
        help_text="POST the job's events here, signed (Standard Webhooks; secret: /api/v1/webhooks/secret). "
        "https to a public address, unless the host is in WEBHOOK_ALLOWED_HOSTS.",
    )
    webhook_events_filter = serializers.ListField(
        child=serializers.ChoiceField(choices=WEBHOOK_EVENTS),
        required=False,
        default=default_webhook_events,
        max_length=len(WEBHOOK_EVENTS),
        help_text="Which events to send (progress at most every WEBHOOK_PROGRESS_INTERVAL_S).",
    )

    def validate_webhook(self, value):
        return value or ""

    def validate_webhook_events_filter(self, value):
        return list(dict.fromkeys(value))

    def validate(self, attrs):
        if attrs.get("speed") == Speed.FAST and attrs.get("step_cache"):
            raise ApiError(
                "OPTIONS_CONFLICT",
                "speed 'fast' and step_cache cannot be combined; choose one.",
                details={"speed": [{"code": "conflict", "message": "not combinable with step_cache"}]},
            )
        return super().validate(attrs)


# --- the shapes of the JSON columns, for the schema only: the values are returned as stored ---------------


class JobProgressSerializer(serializers.Serializer):
    """Where a job is: prompt `prompt` (0-based) of `prompts`, step `step` of its `steps`; `fraction` of all
    denoising steps of the job done (1.0 once it succeeded)."""

    prompt = serializers.IntegerField(required=False)
    prompts = serializers.IntegerField(required=False)
    step = serializers.IntegerField(required=False)
    steps = serializers.IntegerField(required=False)
    fraction = serializers.FloatField(required=False)


class PromptTimingsSerializer(serializers.Serializer):
    """Seconds one prompt's render took, by stage (a stage that did not run is absent)."""

    lora_switch = serializers.FloatField(required=False)
    fast_merge = serializers.FloatField(required=False)
    text_encode = serializers.FloatField(required=False)
    denoise = serializers.FloatField(required=False)
    denoise_per_step = serializers.FloatField(required=False)
    vae_decode = serializers.FloatField(required=False)
    mp4_encode = serializers.FloatField(required=False)
    save = serializers.FloatField(required=False)


class JobTimingsSerializer(serializers.Serializer):
    """Seconds: loading the model (`load`) and each prompt's stages; empty until the job finished."""

    load = serializers.FloatField(required=False, allow_null=True)
    prompts = PromptTimingsSerializer(many=True, required=False)


class RecordLoraSerializer(serializers.Serializer):
    name = serializers.CharField(required=False)
    sha256 = serializers.CharField(required=False, allow_null=True)
    multiplier = serializers.FloatField(required=False, allow_null=True)


class OutputRecordSerializer(serializers.Serializer):
    """Everything needed to reproduce an output: the prompt's effective values, the model, the LoRAs, the
    scheduler and speed, the software versions and the timings."""

    job_id = serializers.UUIDField(required=False)
    model = serializers.CharField(required=False)
    checkpoint = serializers.CharField(required=False)
    prompt = serializers.CharField(required=False)
    neg = serializers.CharField(required=False)
    width = serializers.IntegerField(required=False)
    height = serializers.IntegerField(required=False)
    num_frames = serializers.IntegerField(required=False)
    sample_steps = serializers.IntegerField(required=False)
    guidance_scale = serializers.FloatField(required=False)
    seed = serializers.IntegerField(required=False)
    fps = serializers.IntegerField(required=False)
    lora_scale = serializers.FloatField(required=False, allow_null=True)
    scheduler = serializers.CharField(required=False)
    speed = serializers.CharField(required=False)
    preset = serializers.CharField(required=False, help_text='"standard" or "draft".')
    lora_math = serializers.CharField(required=False, help_text='"peft", "stack" or "merged".')
    step_cache = serializers.FloatField(required=False, allow_null=True)
    loras = RecordLoraSerializer(many=True, required=False)
    software = serializers.DictField(child=serializers.CharField(), required=False)
    timings = PromptTimingsSerializer(required=False)


@extend_schema_field(JobProgressSerializer)
class ProgressField(serializers.JSONField):
    pass


@extend_schema_field(JobTimingsSerializer)
class TimingsField(serializers.JSONField):
    pass


@extend_schema_field(OutputRecordSerializer)
class RecordField(serializers.JSONField):
    pass


class FilledInURLField(serializers.URLField):
    """An output's file URL (`output_urls`): documented here, filled in by the serializer's to_representation."""

    def __init__(self, **kwargs):
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, value):
        return None


def _viewer(context):
    request = context.get("request")
    return request.user if request is not None else None


class JobOutputSerializer(serializers.ModelSerializer):
    record = RecordField(read_only=True)
    url = FilledInURLField(help_text="The MP4.")
    poster_url = FilledInURLField(allow_null=True, help_text="The first frame as PNG.")
    webp_url = FilledInURLField(allow_null=True, help_text="The animated WebP, when the job asked for one.")

    class Meta:
        model = JobOutput
        fields = [
            "index",
            "width",
            "height",
            "num_frames",
            "fps",
            "seed",
            "scheduler",
            "record",
            "created_at",
            "url",
            "poster_url",
            "webp_url",
        ]

    def to_representation(self, output):
        data = {**super().to_representation(output), **output_urls(output, self.context.get("request"))}
        data["record"] = job_record_shown(output.record, job=output.job, user=_viewer(self.context))
        return data


class JobLoraSerializer(serializers.ModelSerializer):
    """A LoRA of the stack as the viewer may see it (`job_loras_shown`): another user's private LoRA is
    named "private LoRA", with `lora` and `sha256` null."""

    sha256 = serializers.CharField(allow_null=True, read_only=True)

    class Meta:
        model = JobLora
        fields = ["lora", "name", "sha256", "multiplier", "url"]

    def to_representation(self, job_lora):
        shown = job_lora_shown(job_lora, job=job_lora.job, user=_viewer(self.context))
        return {name: getattr(shown, name) for name in self.Meta.fields}


class JobSerializer(serializers.ModelSerializer):
    owner = serializers.StringRelatedField()
    loras = JobLoraSerializer(source="job_loras", many=True)
    outputs = JobOutputSerializer(many=True)
    stale = serializers.BooleanField(
        source="is_stale", read_only=True, help_text="Running, but its worker stopped sending heartbeats."
    )
    webhook = serializers.SerializerMethodField(help_text="Shown to the job's owner and staff only.")
    webhook_deliveries = serializers.SerializerMethodField(
        help_text="Each webhook event with its delivery attempts; to the job's owner and staff only."
    )

    def _manages(self, job) -> bool:
        return can_manage(_viewer(self.context), job)

    def get_webhook(self, job) -> str | None:
        return job.webhook if job.webhook and self._manages(job) else None

    def get_webhook_deliveries(self, job) -> list[dict]:
        if not job.webhook or not self._manages(job):
            return []
        return [
            {
                "id": event.message_id,
                "event": event.event,
                "status": event.status,
                "created_at": event.created_at,
                "next_attempt_at": event.next_attempt_at,
                "attempts": [
                    {
                        "number": a.number,
                        "at": a.created_at,
                        "status_code": a.status_code,
                        "error": a.error,
                        "duration_ms": a.duration_ms,
                    }
                    for a in event.attempt_log.all()
                ],
            }
            for event in job.webhook_events.prefetch_related("attempt_log")
        ]

    progress = ProgressField(read_only=True)
    timings = TimingsField(read_only=True)

    class Meta:
        model = GenerationJob
        fields = [
            "id",
            "owner",
            "model",
            "status",
            *JOB_OPTIONS,
            "webhook_deliveries",
            "idempotency_key",
            "prompt_set",
            "prompts",
            "loras",
            "progress",
            "stale",
            "error_code",
            "error_message",
            "attempts",
            "worker",
            "timings",
            "outputs",
            "created_at",
            "started_at",
            "heartbeat_at",
            "finished_at",
        ]


class JobLoraInputSerializer(serializers.Serializer):
    lora = serializers.CharField(max_length=1000, help_text="LoRA id, name, sha256 or relative path.")
    multiplier = serializers.FloatField(
        min_value=MULTIPLIER_LOW,
        max_value=MULTIPLIER_HIGH,
        required=False,
        allow_null=True,
        help_text="Defaults to the LoRA's default multiplier.",
    )


class JobCreateSerializer(JobOptionsSerializer):
    model = serializers.CharField(default=DEFAULT_MODEL)
    loras = JobLoraInputSerializer(many=True, required=False, max_length=MAX_LORAS, default=list)
    prompt_set = serializers.IntegerField(required=False, allow_null=True)
    prompts = prompts_field()
    trigger_word = serializers.CharField(max_length=200, required=False, allow_blank=True, allow_null=True)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["prompts"].required = False

    def validate(self, data):
        if bool(data.get("prompt_set")) == bool(data.get("prompts")):
            raise serializers.ValidationError("Give either prompt_set or prompts.", code="prompts_or_prompt_set")
        return super().validate(data)
