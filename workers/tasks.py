"""Celery tasks: thin, keyed by job id, safe to run twice."""
import logging

import torch
from celery import shared_task
from celery.signals import worker_ready

from webapp.jobs import services
from workers import render
from workers.pipeline.runtime import RenderCanceled
from workers.runtime import get_runtime

log = logging.getLogger(__name__)


@worker_ready.connect
def preload_pipeline(sender=None, **kwargs):
    """Load the model before the first job arrives (GPU workers run one solo process per GPU)."""
    if "gpu" in {q.name for q in sender.task_consumer.queues}:
        get_runtime()


@shared_task(name="workers.render_job", bind=True)
def render_job(self, job_id: str) -> str:
    job = services.job_start(job_id=job_id, worker=self.request.hostname or "worker")
    if job is None:
        return "skipped"
    try:
        render.render_job(job=job, runtime=get_runtime())
    except RenderCanceled:
        log.info("job %s canceled while rendering; partial work dropped", job_id)
        return "canceled"
    except render.LoraMissing as exc:
        services.job_fail(job=job, code="LORA_MISSING", message=str(exc))
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        services.job_fail(job=job, code="OUT_OF_MEMORY", message=str(exc).splitlines()[0])
    except Exception as exc:
        log.exception("job %s failed", job_id)
        services.job_fail(job=job, code="RENDER_FAILED", message=f"{type(exc).__name__}: {exc}")
    return "done"
