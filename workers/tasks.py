"""Celery tasks: thin, keyed by job id, safe to run twice."""
import logging
import os
import socket

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings

from webapp.jobs import services
from workers import broker, render
from workers.runtime import get_runtime, warm_up
from workers.supervision import EXIT_CODE_REPLACE_ME, Deadline, Heartbeat, failure_decision

log = logging.getLogger(__name__)


@worker_ready.connect
def on_worker_ready(sender=None, **kwargs):
    """Before taking jobs: requeue what a previous run of this worker left running, re-send lost
    messages, and load the model (GPU workers run one solo process per GPU)."""
    hostname = getattr(sender, "hostname", None) or socket.gethostname()
    reconcile_jobs(dead_worker=hostname)
    if broker.GPU_QUEUE in {q.name for q in sender.task_consumer.queues}:
        try:
            get_runtime()
        except Exception:  # a worker without a model would fail every job it takes
            log.exception("could not load the model; exiting")
            os._exit(EXIT_CODE_REPLACE_ME)
        try:
            warm_up()
        except Exception:  # jobs then compile on first use, as without a warm-up
            log.exception("warm-up failed")


@shared_task(name="workers.reconcile_jobs")
def reconcile_jobs(dead_worker: str | None = None) -> dict:
    result = services.jobs_reconcile(broker_job_ids=broker.queued_job_ids(), dead_worker=dead_worker)
    if any(result.values()):
        log.warning("reconciled jobs: %s", result)
    return result


@worker_shutdown.connect
def store_pending_outputs(**kwargs):
    render.drain()


def settle_failure(job, exc: BaseException, *, on_cuda: bool) -> str | None:
    """Record what a failure means for the job (see failure_decision); exits the process if it must."""
    decision = failure_decision(exc, on_cuda=on_cuda)
    if decision.code is None:
        log.info("job %s canceled while rendering; partial work dropped", job.pk)
        return None
    if decision.retry:
        services.job_requeue(job_id=job.pk, reason=f"{decision.code}: {type(exc).__name__}: {exc}")
    else:
        if decision.code == "RENDER_FAILED":
            log.error("job %s failed", job.pk, exc_info=exc)
        services.job_fail(job=job, code=decision.code, message=f"{type(exc).__name__}: {exc}".splitlines()[0])
    if decision.exit_worker:
        log.error("%s: exiting so this worker is replaced", decision.code)
        os._exit(EXIT_CODE_REPLACE_ME)
    return decision.code


@shared_task(name="workers.render_job", bind=True)
def render_job(self, job_id: str) -> str:
    """Render a job; its outputs are stored on the finisher thread while the next job starts."""
    runtime = get_runtime()  # before claiming: a worker that cannot load leaves the job queued
    render.wait_for_finisher(max_pending=1)  # store at most one earlier job while this one renders
    job = services.job_start(job_id=job_id, worker=self.request.hostname or socket.gethostname())
    if job is None:
        return "skipped"  # canceled, finished, or a duplicate delivery
    on_cuda = runtime.device.startswith("cuda")
    heartbeat = Heartbeat(lambda: services.job_heartbeat(job=job), settings.JOB_HEARTBEAT_S).start()

    def finish(error, timings):  # on the finisher thread, once every output is stored
        heartbeat.stop()
        if error is None:
            services.job_succeed(job=job, timings=timings)
        else:
            settle_failure(job, error, on_cuda=on_cuda)

    def give_up():
        services.job_fail(job=job, code="TIMEOUT", message="The job passed its hard time limit; worker replaced.")

    try:
        with Deadline(settings.JOB_SOFT_TIME_LIMIT_S, settings.JOB_HARD_TIME_LIMIT_S, give_up) as deadline:
            render.render_job(job=job, runtime=runtime, deadline=deadline, finish=finish)
        return "rendered"
    except Exception as exc:
        heartbeat.stop()
        return settle_failure(job, exc, on_cuda=on_cuda) or "canceled"
