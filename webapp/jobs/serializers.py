"""Job representations shared by the resource API and the reference-compatible API."""

from django.conf import settings
from django.urls import reverse
from rest_framework import serializers

from webapp.core.catalog import DEFAULT_MODEL, MAX_LORAS, MULTIPLIER_HIGH, MULTIPLIER_LOW
from webapp.core.errors import ApiError
from webapp.prompts.serializers import PromptFieldsSerializer
from workers.pipeline.params import PROMPT_SEMANTICS

from .models import GenerationJob, JobLora, JobOutput, Scheduler, Speed
from .selectors import job_lora_shown, job_record_shown


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

    def validate(self, attrs):
        if attrs.get("speed") == Speed.FAST and attrs.get("step_cache"):
            raise ApiError(
                "OPTIONS_CONFLICT",
                "speed 'fast' and step_cache cannot be combined; choose one.",
                details={"speed": [{"code": "conflict", "message": "not combinable with step_cache"}]},
            )
        return super().validate(attrs)


def _viewer(context):
    request = context.get("request")
    return request.user if request is not None else None


class JobOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobOutput
        fields = ["index", "width", "height", "num_frames", "fps", "seed", "scheduler", "record", "created_at"]

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

    class Meta:
        model = GenerationJob
        fields = [
            "id",
            "owner",
            "model",
            "status",
            "priority",
            "scheduler",
            "prompt_semantics",
            "webp",
            "step_cache",
            "speed",
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
