"""REST resources /api/v1/jobs/ (submit, list, detail, cancel, retry) and output downloads."""

import re
from collections.abc import Mapping

from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponseRedirect, JsonResponse
from django.urls import path
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from webapp.core.errors import NotFound, error_body
from webapp.core.storage import storage_is_local

from .models import GenerationJob, JobOutput
from .selectors import job_get, job_list, jobs_using_lora
from .serializers import JobCreateSerializer, JobSerializer
from .services import (
    idempotency_key_check,
    job_cancel,
    job_delete,
    job_for_idempotency_key,
    job_rerun,
    job_retry,
    job_spec_from_request,
    job_submit,
)
from .webhooks import webhook_secret_get, webhook_secret_rotate


def stored_request(payload: serializers.Serializer) -> dict:
    """A validated request as kept with its job: the fields `payload` declares, nested ones too, as
    the client sent them (so bounded by their validation); other keys and write-only fields are dropped."""
    return _declared(payload, payload.initial_data)


def _declared(field, value):
    if isinstance(field, serializers.ListSerializer) and isinstance(value, list):
        return [_declared(field.child, item) for item in value]
    if isinstance(field, serializers.Serializer) and isinstance(value, Mapping):
        return {
            name: _declared(child, value[name])
            for name, child in field.fields.items()
            if name in value and not child.write_only
        }
    return value


class JobFilter(filters.FilterSet):
    lora = filters.NumberFilter(method="filter_lora", help_text="A LoRA id; one you may not see matches nothing.")

    class Meta:
        model = GenerationJob
        fields = ["status", "owner", "model", "lora", "prompt_set"]

    def filter_lora(self, queryset, name, value):
        return jobs_using_lora(jobs=queryset, lora=value, user=self.request.user)


class JobViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    queryset = job_list()
    serializer_class = JobSerializer
    filterset_class = JobFilter

    def get_throttles(self):
        return [ScopedRateThrottle()] if self.action in ("create", "rerun", "retry") else []

    throttle_scope = "submit"

    def perform_destroy(self, instance):
        job_delete(job=instance, actor=self.request.user)

    def get_object(self):
        return job_get(job_id=self.kwargs["pk"])

    @extend_schema(request=JobCreateSerializer, responses={201: JobSerializer})
    def create(self, request):
        """With an Idempotency-Key header already used by this user: the first job, 200, nothing created."""
        key = idempotency_key_check(request.headers.get("Idempotency-Key"))
        if job := job_for_idempotency_key(owner=request.user, key=key):
            return self._job_response(job)
        payload = JobCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        spec = job_spec_from_request(owner=request.user, data=data, request=stored_request(payload))
        job = job_submit(owner=request.user, spec=spec, idempotency_key=key)
        return self._job_response(job, status.HTTP_200_OK if job.replayed else status.HTTP_201_CREATED)

    def _job_response(self, job, status_code=status.HTTP_200_OK):
        return Response(
            JobSerializer(job_get(job_id=job.pk), context={"request": self.request}).data, status=status_code
        )

    @extend_schema(request=None, responses={200: JobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        return self._job_response(job_cancel(job=self.get_object(), actor=request.user))

    @extend_schema(request=None, responses={200: JobSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        return self._job_response(job_retry(job=self.get_object(), actor=request.user))

    @extend_schema(request=None, responses={201: JobSerializer})
    @action(detail=True, methods=["post"])
    def rerun(self, request, pk=None):
        """Queue a new job with exactly this job's settings (same seeds, LoRAs, multipliers, scheduler)."""
        return self._job_response(job_rerun(job=self.get_object(), owner=request.user), status.HTTP_201_CREATED)


CONTENT_TYPES = {"video": "video/mp4", "poster": "image/png", "webp": "image/webp"}
_BYTES = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """The one range `header` asks of `size` bytes as (first, last), both inclusive; None to send the whole
    file (no Range, a malformed one, several ranges: RFC 9110 lets a server ignore it); False when it cannot
    be satisfied."""
    match = _BYTES.match((header or "").replace(" ", ""))
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if not first:  # a suffix: the last N bytes
        return (max(size - int(last), 0), size - 1) if int(last) and size else False
    first = int(first)
    if last and int(last) < first:  # bytes=9-5: invalid, ignored
        return None
    if first >= size:
        return False
    return first, min(int(last), size - 1) if last else size - 1


class BoundedReader:
    """Reads at most `length` bytes of `handle` from where it stands: FileResponse streams it in blocks
    and closes it (no fileno, so no sendfile of the whole file)."""

    def __init__(self, handle, length: int):
        self.handle, self.left = handle, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size is None or size < 0 else min(size, self.left)
        data = self.handle.read(size) if size else b""
        self.left -= len(data)
        return data

    def close(self):
        self.handle.close()


RANGE_HEADER = OpenApiParameter(
    "Range",
    OpenApiTypes.STR,
    OpenApiParameter.HEADER,
    required=False,
    description="One byte range: bytes=0-99, bytes=100- or bytes=-100.",
)


def file_download_schema(*content_types: str):
    """The schema of a stored-file download (`stored_file_response`) of these content types."""
    return extend_schema(
        parameters=[RANGE_HEADER],
        responses={
            **{(200, content_type): OpenApiTypes.BINARY for content_type in content_types},
            **{(206, content_type): OpenApiTypes.BINARY for content_type in content_types},
            302: OpenApiResponse(description="Object storage: a presigned URL of the file."),
            416: OpenApiResponse(description="The range starts past the end of the file (see Content-Range)."),
        },
    )


def stored_file_response(request, field, *, content_type: str, gone: NotFound):
    """A file of the default storage as the answer to `request`, streamed. Local files honour a single
    `Range: bytes=...` (206, or 416 past the end); from S3 the answer is a redirect to a presigned URL of
    the object, which honours Range itself. `gone` is raised when the file was deleted meanwhile."""
    if not storage_is_local():  # S3 and the like: a (presigned) URL of the object itself
        return HttpResponseRedirect(default_storage.url(field.name))
    name = field.name.rsplit("/", 1)[-1]
    try:
        handle = default_storage.open(field.name, "rb")
    except FileNotFoundError:
        raise gone from None
    size = handle.size
    wanted = byte_range(request.headers.get("Range"), size)
    if wanted is False:
        handle.close()
        response = JsonResponse(error_body("RANGE_NOT_SATISFIABLE", f"The file has {size} bytes."), status=416)
        response["Content-Range"] = f"bytes */{size}"
    elif wanted is None:
        response = FileResponse(handle, filename=name, content_type=content_type)
    else:
        first, last = wanted
        handle.seek(first)
        response = FileResponse(
            BoundedReader(handle, last - first + 1), filename=name, content_type=content_type, status=206
        )
        response["Content-Length"] = str(last - first + 1)
        response["Content-Range"] = f"bytes {first}-{last}/{size}"
    response["Accept-Ranges"] = "bytes"
    return response


class OutputFileView(APIView):
    """Download an output's MP4, poster (PNG) or WebP from whichever storage holds it (`stored_file_response`)."""

    @file_download_schema(*CONTENT_TYPES.values())
    def get(self, request, pk, kind):
        output = get_object_or_404(JobOutput, pk=pk)
        field = getattr(output, kind)
        if not field:
            raise NotFound("OUTPUT_FILE_NOT_FOUND", "This output has no such file.")
        gone = NotFound("OUTPUT_FILE_NOT_FOUND", "This output's file is gone.")  # a retry or delete meanwhile
        return stored_file_response(request, field, content_type=CONTENT_TYPES[kind], gone=gone)


class WebhookSecretView(APIView):
    """Your webhook signing secret, `whsec_<base64>` (made on first use)."""

    @extend_schema(request=None, responses={200: dict}, operation_id="webhook_secret")
    def get(self, request):
        return Response({"key": webhook_secret_get(user=request.user)})


class WebhookSecretRotateView(APIView):
    """A new webhook signing secret; every delivery from now on (retries too) is signed with it."""

    @extend_schema(request=None, responses={200: dict}, operation_id="webhook_secret_rotate")
    def post(self, request):
        return Response({"key": webhook_secret_rotate(user=request.user)})


webhook_urls = [  # under /api/v1/webhooks/
    path("secret", WebhookSecretView.as_view(), name="webhook-secret"),
    path("secret/rotate", WebhookSecretRotateView.as_view(), name="webhook-secret-rotate"),
]
