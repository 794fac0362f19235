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
from .serializers import JobOptionsSerializer, output_urls, prompts_field
from .services import job_cancel, job_spec, job_submit

STATUS_NAMES = {JobStatus.QUEUED: "in_queue", JobStatus.RUNNING: "in_progress"}


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


def inference_submit(*, body: dict, user) -> GenerationJob:
    """Validate a reference-schema request and queue it as a job (the API and `manage.py demo`)."""
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
    return job_submit(owner=user, spec=spec)


class InferenceView(APIView):
    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "submit"

    @extend_schema(request=InferenceRequestSerializer, responses={200: dict}, operation_id="v1_inference")
    def post(self, request):
        job = inference_submit(body=request.data, user=request.user)
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
    @extend_schema(responses={200: dict}, operation_id="v1_request_status")
    def get(self, request, request_id):
        return Response(status_body(job_get(job_id=request_id, code="REQUEST_NOT_FOUND")))


class RequestResultView(APIView):
    @extend_schema(responses={200: dict}, operation_id="v1_request_result")
    def get(self, request, request_id):
        return Response(result_body(job_get(job_id=request_id, code="REQUEST_NOT_FOUND"), request))


class RequestCancelView(APIView):
    @extend_schema(request=None, responses={200: dict}, operation_id="v1_request_cancel")
    def post(self, request, request_id):
        job = job_cancel(job=job_get(job_id=request_id, code="REQUEST_NOT_FOUND"), actor=request.user)
        return Response(status_body(job))


class ModelsView(APIView):
    @extend_schema(responses={200: dict}, operation_id="v1_models")
    def get(self, request):
        return Response({"models": model_list()})


class HealthView(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    @extend_schema(responses={200: dict}, operation_id="health")
    def get(self, request):
        return Response({"status": "healthy"})
