"""Reads of generation jobs."""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from webapp.core.errors import NotFound

from .models import GenerationJob


def job_list() -> QuerySet[GenerationJob]:
    return GenerationJob.objects.select_related("owner").prefetch_related("job_loras", "outputs")


def job_get(*, job_id, code: str = "JOB_NOT_FOUND") -> GenerationJob:
    try:
        return job_list().get(pk=job_id)
    except (GenerationJob.DoesNotExist, ValidationError, ValueError):  # malformed ids are just unknown
        raise NotFound(code, f"No job with id {job_id}.", details={"id": str(job_id)}) from None
