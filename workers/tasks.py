"""Celery tasks: thin, keyed by job id, safe to run twice."""
import logging
import os
import socket

from celery import shared_task
from celery.signals import worker_ready
from django.conf import settings

from webapp.jobs import services
from workers import broker, render
from workers.runtime import get_runtime
from workers.supervision import EXIT_CODE_REPLACE_ME, Deadline, Heartbeat, failure_decision

log = logging.getLogger(__name__)


@worker_ready.connect
def on_worker_ready(sender=None, **kwargs):
    """Before taking jobs: requeue what a previous run of this worker left running, re-send lost
    messages, and load the model (GPU workers run one solo process per GPU)."""
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    reconcile_jobs(dead_worker=hostname)
    if "gpu" in {q.name for q in sender.task_consumer.queues}:
        get_runtime()


@shared_task(name="workers.reconcile_jobs")
def reconcile_jobs(dead_worker: str | None = None) -> dict:
    result = services.jobs_reconcile(broker_job_ids=broker.queued_job_ids(), dead_worker=dead_worker)
    if any(result.values()):
        log.warning("reconciled jobs: %s", result)
    return result


@shared_task(name="workers.render_job", bind=True)
def render_job(self, job_id: str) -> str:
    job = services.job_start(job_id=job_id, worker=self.request.hostname or socket.gethostname())
    if job is None:
        return "skipped"  # canceled, finished, or a duplicate delivery
    runtime = get_runtime()

    def give_up():
        services.job_fail(job=job, code="TIMEOUT", message="The job passed its hard time limit; worker replaced.")

    try:
        with Heartbeat(lambda: services.job_heartbeat(job=job), settings.JOB_HEARTBEAT_S), \
                Deadline(settings.JOB_SOFT_TIME_LIMIT_S, settings.JOB_HARD_TIME_LIMIT_S, give_up) as deadline:
            render.render_job(job=job, runtime=runtime, deadline=deadline)
        return "done"
    except Exception as exc:
        decision = failure_decision(exc, on_cuda=runtime.device.startswith("cuda"))
        if decision.code is None:
            log.info("job %s canceled while rendering; partial work dropped", job_id)
            return "canceled"
        if decision.retry:
            services.job_requeue(job_id=job.pk, reason=f"{decision.code}: {type(exc).__name__}: {exc}")
        else:
            if decision.code == "RENDER_FAILED":
                log.exception("job %s failed", job_id)
            services.job_fail(job=job, code=decision.code, message=f"{type(exc).__name__}: {exc}".splitlines()[0])
        if decision.exit_worker:
            log.error("CUDA context is broken; exiting so this worker is replaced")
            os._exit(EXIT_CODE_REPLACE_ME)
        return decision.code
