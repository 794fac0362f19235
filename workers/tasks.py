"""Celery tasks: thin, keyed by job id, safe to run twice. The work is in JobAttempt and GpuHost."""

import logging
import socket

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from webapp.jobs import services, webhooks
from webapp.sweeps import services as sweep_services
from workers import broker
from workers.attempt import JobAttempt
from workers.host import GpuHost

log = logging.getLogger(__name__)


@worker_ready.connect
def on_worker_ready(sender=None, **kwargs):
    """Before taking jobs: requeue what a previous run of this worker left running, re-send lost
    messages, and set up the GPU host (GPU workers run one solo process per GPU)."""
    reconcile_jobs(dead_worker=getattr(sender, "hostname", None) or socket.gethostname())
    if broker.GPU_QUEUE in {q.name for q in sender.task_consumer.queues}:
        GpuHost.current().setup()


@worker_shutdown.connect
def store_pending_outputs(**kwargs):
    if (host := GpuHost.current(create=False)) is not None:
        host.drain()


@shared_task(name="workers.reconcile_jobs")
def reconcile_jobs(dead_worker: str | None = None) -> dict:
    result = services.jobs_reconcile(broker_job_ids=broker.queued_job_ids(), dead_worker=dead_worker)
    if any(result.values()):
        log.warning("reconciled jobs: %s", result)
    if resent := webhooks.webhook_resend_due():
        log.warning("re-sent %d webhook events", resent)
    if unsettled := sweep_services.sweeps_reconcile():
        log.warning("settling %d sweeps again", unsettled)
    return result


@shared_task(name="workers.deliver_webhook")
def deliver_webhook(event_id: str, attempt: int | None = None) -> str:
    """CPU queue: attempt number `attempt` at posting a job's webhook event; a failure schedules the next one.
    (None: a message queued before attempts were numbered, taken as the next attempt.)"""
    return webhooks.webhook_deliver(event_id=event_id, attempt=attempt)


@shared_task(name="workers.settle_sweep")
def settle_sweep(sweep_id: str) -> str:
    """CPU queue: a sweep's status from its cells; once every cell has finished, its grids."""
    return sweep_services.sweep_settle(sweep_id=sweep_id)


@shared_task(name="workers.fetch_job_loras")
def fetch_job_loras(job_id: str) -> str:
    """CPU queue: fetch a job's LoRAs named by URL, then queue it to render."""
    return services.job_fetch_loras(job_id=job_id)


@shared_task(name="workers.render_job", bind=True)
def render_job(self, job_id: str) -> str:
    """Render a job; its outputs are stored on the finisher thread while the next job starts."""
    worker = self.request.hostname or socket.gethostname()
    return JobAttempt(job_id, host=GpuHost.current(), worker=worker).run()
