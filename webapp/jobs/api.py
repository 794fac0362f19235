"""REST resources /api/v1/jobs/ (submit, list, detail, cancel, retry) and output downloads."""

from collections.abc import Mapping

from django.core.files.storage import default_storage
from django.http import FileResponse, HttpResponseRedirect
from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from webapp.core.errors import NotFound
from webapp.core.storage import storage_is_local

from .models import GenerationJob, JobOutput
from .selectors import job_get, job_list, jobs_using_lora
from .serializers import JobCreateSerializer, JobSerializer
from .services import job_cancel, job_delete, job_rerun, job_retry, job_spec_from_request, job_submit


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
        payload = JobCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        spec = job_spec_from_request(owner=request.user, data=data, request=stored_request(payload))
        job = job_submit(owner=request.user, spec=spec)
        return self._job_response(job, status.HTTP_201_CREATED)

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


class OutputFileView(APIView):
    """Download an output's MP4 or poster, streamed from whichever storage holds it."""

    @extend_schema(responses={(200, "video/mp4"): bytes})
    def get(self, request, pk, kind):
        output = get_object_or_404(JobOutput, pk=pk)
        field = getattr(output, kind)
        if not field:
            raise NotFound("OUTPUT_FILE_NOT_FOUND", "This output has no such file.")
        if not storage_is_local():  # S3 and the like: a (presigned) URL of the object itself
            return HttpResponseRedirect(default_storage.url(field.name))
        name = field.name.rsplit("/", 1)[-1]
        try:
            handle = default_storage.open(field.name, "rb")
        except FileNotFoundError:  # deleted by a retry or delete meanwhile
            raise NotFound("OUTPUT_FILE_NOT_FOUND", "This output's file is gone.") from None
        return FileResponse(handle, filename=name, content_type=CONTENT_TYPES[kind])
