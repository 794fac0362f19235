"""Jobs under faults, on real worker processes: cancel, SIGKILL, a flushed broker, priorities,
time limits, out-of-memory and a broken CUDA context (decisions injected on CPU)."""

import pytest
import redis
import torch
from django.conf import settings
from django.utils import timezone

from tests.conftest import wait_for
from webapp.jobs import services
from webapp.jobs.models import GenerationJob, JobStatus
from workers import tasks
from workers.attempt import Decision, JobAttempt, failure_decision
from workers.celery_app import app as celery_app
from workers.host import GpuHost
from workers.pipeline.parallel import ParallelFailed

LONG = {"prompt": "a long render", "width": 512, "height": 512, "num_frames": 17, "sample_steps": 150}  # ~25 s
SHORT = {"prompt": "a quick one", "width": 64, "height": 64, "num_frames": 1, "sample_steps": 1}
FAST_RECOVERY = {"JOB_STALE_AFTER_S": 2, "JOB_HEARTBEAT_S": 0.5, "JOB_RECONCILE_GRACE_S": 0}


def submit(api, prompt, **options):
    response = api.post("/api/v1/jobs/", {"prompts": [prompt], **options}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def submit_short(user) -> GenerationJob:
    return services.job_submit(owner=user, spec=services.job_spec(owner=user, loras=[], options={}, prompts=[SHORT]))


def job(job_id) -> GenerationJob:
    return GenerationJob.objects.get(pk=job_id)


def reaches(job_id, *statuses, timeout=120):
    return wait_for(lambda: job(job_id).status in statuses and job(job_id), timeout=timeout)


def rendering(job_id, step=2):
    return wait_for(lambda: job(job_id).progress.get("step", 0) >= step and job(job_id).status == "running")


def test_cancel_stops_a_running_job_and_the_next_starts_at_once(api, start_worker):
    start_worker("cancel")
    running = submit(api, LONG)
    waiting = submit(api, SHORT)
    rendering(running)
    assert api.post(f"/api/v1/jobs/{waiting}/cancel/").json()["status"] == "canceled"
    assert api.post(f"/api/v1/jobs/{running}/cancel/").json()["status"] == "canceled"
    after = submit(api, SHORT)
    reaches(after, "succeeded", timeout=60)
    stopped = job(running)
    # The worker dropped the long job at the step it saw the cancel instead of finishing its 150 steps.
    assert stopped.progress["step"] < LONG["sample_steps"] and stopped.finished_at is not None
    assert stopped.outputs.count() == 0 and stopped.status == "canceled"
    assert job(waiting).started_at is None and job(waiting).attempts == 0


def test_sigkill_mid_render_is_redelivered_and_finishes(api, start_worker, settings):
    settings.JOB_STALE_AFTER_S = FAST_RECOVERY["JOB_STALE_AFTER_S"]
    first = start_worker("doomed", **FAST_RECOVERY)
    job_id = submit(api, {**LONG, "sample_steps": 40})
    rendering(job_id)
    first.kill()
    assert job(job_id).status == "running"
    wait_for(lambda: api.get(f"/api/v1/jobs/{job_id}/").json()["stale"], timeout=30)
    start_worker("rescuer", **FAST_RECOVERY)
    done = reaches(job_id, "succeeded", "failed")
    assert done.status == "succeeded" and done.attempts == 2 and done.worker == "rescuer@test"
    assert done.outputs.count() == 1


def test_duplicate_delivery_of_a_finished_job_does_nothing(api, start_worker):
    start_worker("dup")
    job_id = submit(api, SHORT)
    done = reaches(job_id, "succeeded")
    celery_app.send_task("workers.render_job", args=[job_id], queue="gpu", task_id=f"{job_id}.again")
    after = submit(api, SHORT)
    reaches(after, "succeeded")  # the duplicate was consumed before this one
    assert job(job_id).attempts == 1 and job(job_id).finished_at == done.finished_at


def test_flushed_broker_loses_no_job_and_runs_none_twice(api, start_worker):
    queued = [submit(api, SHORT) for _ in range(3)]
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # broker restarted empty
    start_worker("after-flush", **FAST_RECOVERY)  # reconciles at start-up
    for job_id in queued:
        assert reaches(job_id, "succeeded").attempts == 1

    busy = submit(api, LONG | {"sample_steps": 30})
    rendering(busy)
    later = [submit(api, SHORT) for _ in range(2)]
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()  # flushed while a worker is busy
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "JOB_RECONCILE_GRACE_S", 0)
        assert tasks.reconcile_jobs() == {"requeued": 0, "resent": 2}  # the periodic task
    for job_id in [busy, *later]:
        assert reaches(job_id, "succeeded").attempts == 1


def test_higher_priority_starts_first_then_first_come_first_served(api, start_worker):
    start_worker("prio")
    busy = submit(api, LONG)
    rendering(busy)
    low = [submit(api, SHORT, priority=0), submit(api, SHORT, priority=0)]
    high = submit(api, SHORT, priority=7)  # the highest a member may give (PRIORITY_STAFF_ONLY_FROM)
    api.post(f"/api/v1/jobs/{busy}/cancel/")
    finished = [reaches(j, "succeeded") for j in (high, *low)]
    starts = [j.started_at for j in finished]
    assert starts == sorted(starts)


@pytest.mark.django_db
def test_worker_lost_after_the_attempt_limit(user):
    job_row = submit_short(user)
    long_ago = timezone.now() - timezone.timedelta(hours=1)
    GenerationJob.objects.filter(pk=job_row.pk).update(
        status=JobStatus.RUNNING, attempts=settings.JOB_MAX_ATTEMPTS, heartbeat_at=long_ago, worker="gone@host"
    )
    assert services.jobs_reconcile(broker_job_ids=set()) == {"requeued": 1, "resent": 0}
    failed = job(job_row.pk)
    assert (failed.status, failed.error_code) == ("failed", "WORKER_LOST")


@pytest.mark.django_db(transaction=True)
def test_soft_time_limit_fails_with_timeout(user, tiny_model, settings):
    settings.JOB_TIME_LIMIT_BASE_S = settings.JOB_TIME_LIMIT_PER_STEP_S = 0
    job_row = submit_short(user)
    assert tasks.render_job(str(job_row.pk)) == "TIMEOUT"
    assert (job(job_row.pk).status, job(job_row.pk).error_code) == ("failed", "TIMEOUT")


@pytest.mark.django_db(transaction=True)
def test_out_of_memory_fails_the_job_and_the_worker_carries_on(user, tiny_model, monkeypatch):
    def oom(self, deadline):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(JobAttempt, "render_prompts", oom)
    job_row = submit_short(user)
    assert tasks.render_job(str(job_row.pk)) == "OUT_OF_MEMORY"
    assert job(job_row.pk).error_code == "OUT_OF_MEMORY"
    monkeypatch.undo()
    next_job = submit_short(user)
    assert tasks.render_job(str(next_job.pk)) == "rendered"
    GpuHost.current().drain()  # outputs are stored on the finisher thread
    assert job(next_job.pk).status == "succeeded"


@pytest.mark.parametrize(
    "exc,on_cuda,healthy,expected",
    [
        (RuntimeError("CUDA error: an illegal memory access"), True, False, Decision("CUDA_ERROR", True, True)),
        (RuntimeError("shape mismatch"), True, True, Decision("RENDER_FAILED")),
        (RuntimeError("shape mismatch"), False, False, Decision("RENDER_FAILED")),
        (torch.cuda.OutOfMemoryError("oom"), False, True, Decision("OUT_OF_MEMORY")),
        (ParallelFailed("rank 2 failed"), True, True, Decision("PARALLEL_FAILED", True, True)),
    ],
)
def test_failure_decisions(exc, on_cuda, healthy, expected):
    assert failure_decision(exc, on_cuda=on_cuda, cuda_healthy=lambda: healthy) == expected


@pytest.mark.django_db
def test_poisoned_cuda_context_requeues_the_job(user):
    job_row = submit_short(user)
    services.job_start(job_id=job_row.pk, worker="w@host")
    assert services.job_requeue(job_id=job_row.pk, reason="CUDA_ERROR").status == "queued"
