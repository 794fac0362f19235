"""The ai-toolkit-inference HTTP API (/v1/...), field for field, on top of the job queue.

Clients written for the reference server work unchanged; statuses map
queued->in_queue and running->in_progress. Unlike the reference, requests
survive restarts (they are job rows) and can be canceled.
"""

from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from webapp.core.catalog import MAX_LORAS, MULTIPLIER_HIGH, MULTIPLIER_LOW, model_check, model_list

from .api import stored_request
from .models import GenerationJob, JobStatus
from .selectors import job_get
from .serializers import JobOptionsSerializer, JobProgressSerializer, JobTimingsSerializer, output_urls, prompts_field
from .services import idempotency_key_check, job_cancel, job_for_idempotency_key, job_spec, job_submit

STATUS_NAMES = {JobStatus.QUEUED: "in_queue", JobStatus.RUNNING: "in_progress"}
# A request's statuses as /status and /result name them (RequestStatusEnum in the schema).
REQUEST_STATUSES = [STATUS_NAMES.get(status, status.value) for status in JobStatus]
ACCEPTED_STATUSES = ["queued"]  # what /v1/inference answers, as the reference server does


class CompatLoraSerializer(serializers.Serializer):
    path = serializers.CharField(max_length=1000)
    network_multiplier = serializers.FloatField(min_value=MULTIPLIER_LOW, max_value=MULTIPLIER_HIGH, default=1.0)


class InferenceRequestSerializer(JobOptionsSerializer):
    model = serializers.CharField(max_length=50)
    loras = CompatLoraSerializer(many=True, allow_empty=True, max_length=MAX_LORAS)
    prompts = prompts_field()
    trigger_word = serializers.CharField(max_length=200, required=False, allow_blank=True, allow_null=True)
    hf_token = serializers.CharField(
        required=False,
        allow_blank=True,
        allow_null=True,
        write_only=True,
        help_text="Accepted for compatibility and ignored; never stored.",
    )

    def validate_model(self, value):
        return model_check(value)


# --- response shapes, for the schema only: the views build their bodies themselves ----------------------


class InferenceAcceptedSerializer(serializers.Serializer):
    request_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=ACCEPTED_STATUSES)
    status_url = serializers.URLField()
    result_url = serializers.URLField()
    created_at = serializers.DateTimeField()


class RequestStatusSerializer(serializers.Serializer):
    request_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=REQUEST_STATUSES)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    error_code = serializers.CharField(allow_null=True)
    progress = JobProgressSerializer()
    stale = serializers.BooleanField(help_text="Running, but its worker stopped sending heartbeats.")


class ResultVideoSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=["mp4"])
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    num_frames = serializers.IntegerField()
    fps = serializers.IntegerField()
    seed = serializers.IntegerField()
    scheduler = serializers.CharField()
    url = serializers.URLField(help_text="The MP4.")
    poster_url = serializers.URLField(allow_null=True, help_text="The first frame as PNG.")
    webp_url = serializers.URLField(allow_null=True, help_text="The animated WebP, when the request asked for one.")


class ResultOutputsSerializer(serializers.Serializer):
    images = serializers.ListField(child=serializers.DictField(), help_text="Always empty: this server renders videos.")
    videos = ResultVideoSerializer(many=True)


class ResultMetadataSerializer(serializers.Serializer):
    model = serializers.CharField()
    inference_time = serializers.FloatField(allow_null=True, help_text="Seconds from start to finish.")
    timings = JobTimingsSerializer()


class RequestResultSerializer(serializers.Serializer):
    request_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=REQUEST_STATUSES)
    outputs = ResultOutputsSerializer()
    error = serializers.CharField(allow_null=True)
    error_code = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    metadata = ResultMetadataSerializer()


class CompatModelSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    type = serializers.ChoiceField(choices=["video"])
    max_loras = serializers.IntegerField()


class ModelsSerializer(serializers.Serializer):
    models = CompatModelSerializer(many=True)


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["healthy"])


def _status(job: GenerationJob) -> str:
    return STATUS_NAMES.get(job.status, job.status)


def status_body(job: GenerationJob) -> dict:
    return {
        "request_id": str(job.id),
        "status": _status(job),
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "error": job.error_message or None,
        "error_code": job.error_code or None,
        "progress": job.progress,
        "stale": job.is_stale,
    }


def result_body(job: GenerationJob, request) -> dict:
    videos = [
        {
            "format": "mp4",
            "width": o.width,
            "height": o.height,
            "num_frames": o.num_frames,
            "fps": o.fps,
            "seed": o.seed,
            "scheduler": o.scheduler,
            **output_urls(o, request),
        }
        for o in job.outputs.all()
    ]
    inference_time = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
    return {
        "request_id": str(job.id),
        "status": _status(job),
        "outputs": {"images": [], "videos": videos},
        "error": job.error_message or None,
        "error_code": job.error_code or None,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "metadata": {"model": job.model, "inference_time": inference_time, "timings": job.timings},
    }


def inference_submit(*, body: dict, user, idempotency_key: str = "") -> GenerationJob:
    """Validate a reference-schema request and queue it as a job (the API and `manage.py demo`); with
    an Idempotency-Key this user already used, the first job (nothing validated or created)."""
    if job := job_for_idempotency_key(owner=user, key=idempotency_key):
        return job
    payload = InferenceRequestSerializer(data=body)
    payload.is_valid(raise_exception=True)
    data = payload.validated_data
    spec = job_spec(
        owner=user,
        loras=[(item["path"], item["network_multiplier"]) for item in data["loras"]],
        options=data,
        prompts=data["prompts"],
        model=data["model"],
        trigger_word=data.get("trigger_word"),
        request=stored_request(payload),  # hf_token is write-only: never stored
    )
    return job_submit(owner=user, spec=spec, idempotency_key=idempotency_key)


class InferenceView(APIView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "submit"

    @extend_schema(
        request=InferenceRequestSerializer, responses={200: InferenceAcceptedSerializer}, operation_id="v1_inference"
    )
    def post(self, request):
        # A repeated Idempotency-Key answers the first job, in the same shape (always 200 here).
        key = idempotency_key_check(request.headers.get("Idempotency-Key"))
        job = inference_submit(body=request.data, user=request.user, idempotency_key=key)
        return Response(
            {
                "request_id": str(job.id),
                "status": "queued",
                "status_url": request.build_absolute_uri(reverse("v1-status", args=[job.id])),
                "result_url": request.build_absolute_uri(reverse("v1-result", args=[job.id])),
                "created_at": job.created_at,
            }
        )


class RequestStatusView(APIView):
    @extend_schema(responses={200: RequestStatusSerializer}, operation_id="v1_request_status")
    def get(self, request, request_id):
        return Response(status_body(job_get(job_id=request_id, code="REQUEST_NOT_FOUND")))


class RequestResultView(APIView):
    @extend_schema(responses={200: RequestResultSerializer}, operation_id="v1_request_result")
    def get(self, request, request_id):
        return Response(result_body(job_get(job_id=request_id, code="REQUEST_NOT_FOUND"), request))


class RequestCancelView(APIView):
    @extend_schema(request=None, responses={200: RequestStatusSerializer}, operation_id="v1_request_cancel")
    def post(self, request, request_id):
        job = job_cancel(job=job_get(job_id=request_id, code="REQUEST_NOT_FOUND"), actor=request.user)
        return Response(status_body(job))


class ModelsView(APIView):
    @extend_schema(responses={200: ModelsSerializer}, operation_id="v1_models")
    def get(self, request):
        return Response({"models": model_list()})


class HealthView(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(responses={200: HealthSerializer}, operation_id="health")
    def get(self, request):
        return Response({"status": "healthy"})
