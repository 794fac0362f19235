"""The job state table: every status reachable, every illegal move refused with its code, worker moves
that lost the job are no-ops, and every door that makes a job carries every job option."""

import pytest

from tests.webapp.test_jobs_api import SMALL, submit
from webapp.jobs import services
from webapp.jobs.models import GenerationJob, JobStatus
from webapp.jobs.serializers import JobOptionsSerializer

pytestmark = pytest.mark.django_db
OPTIONS = {
    "priority": 7,
    "scheduler": "unipc",
    "prompt_semantics": "ai-toolkit",
    "webp": True,
    "step_cache": 0.1,
    "speed": "exact",
    "preset": "standard",
    "webhook": "",
    "webhook_events_filter": ["completed", "start"],
}


def test_the_table_reaches_every_status_from_queued():
    reached, frontier = {JobStatus.QUEUED}, [JobStatus.QUEUED]
    while frontier:
        state = frontier.pop()
        for move in services.TRANSITIONS.values():
            if state in move.sources and move.target not in reached:
                reached.add(move.target)
                frontier.append(move.target)
    assert reached == set(JobStatus)


@pytest.mark.parametrize(
    "status,action,code",
    [
        (JobStatus.SUCCEEDED, "cancel", "JOB_NOT_CANCELABLE"),
        (JobStatus.FAILED, "cancel", "JOB_NOT_CANCELABLE"),
        (JobStatus.QUEUED, "retry", "JOB_NOT_RETRYABLE"),
        (JobStatus.RUNNING, "retry", "JOB_NOT_RETRYABLE"),
        (JobStatus.SUCCEEDED, "retry", "JOB_NOT_RETRYABLE"),
        (JobStatus.QUEUED, "succeed", "JOB_STATE_CONFLICT"),
        (JobStatus.CANCELED, "start", "JOB_STATE_CONFLICT"),
    ],
)
def test_an_illegal_move_raises_one_error_type_with_a_stable_code(api, status, action, code):
    job_id = submit(api)["id"]
    GenerationJob.objects.filter(pk=job_id).update(status=status)
    with pytest.raises(services.IllegalTransition) as refused:
        with services.job_transition(job_id, action):
            pass
    assert refused.value.code == code and refused.value.status_code == 409
    assert GenerationJob.objects.get(pk=job_id).status == status  # nothing moved


def test_worker_moves_of_an_attempt_that_lost_the_job_change_nothing(api):
    job_id = submit(api)["id"]
    first = services.job_start(job_id=job_id, worker="a@host")
    assert services.job_start(job_id=job_id, worker="b@host") is None  # a duplicate delivery
    services.job_requeue(job_id=job_id, reason="worker stopped responding")
    second = services.job_start(job_id=job_id, worker="b@host")
    assert services.job_succeed(job=first, timings={}) is None  # the first attempt was taken over
    assert services.job_fail(job=first, code="RENDER_FAILED", message="late") is None
    assert GenerationJob.objects.get(pk=job_id).status == JobStatus.RUNNING
    assert services.job_succeed(job=second, timings={"load": 1.0}).status == JobStatus.SUCCEEDED


def test_an_output_stored_after_a_cancel_is_not_recorded(api):
    """A cancel between a worker's last check and its output write: no output row (hence no output event)
    follows the job's end; the worker drops the files."""
    job_id = submit(api)["id"]
    running = services.job_start(job_id=job_id, worker="a@host")
    services.job_cancel(job=GenerationJob.objects.get(pk=job_id))
    params = {**running.prompts[0], "seed": 1}
    stored = services.job_add_output(
        job=running, index=0, video="v.mp4", poster="", webp="", params=params, scheduler="euler", record={}
    )
    assert stored is None and not GenerationJob.objects.get(pk=job_id).outputs.exists()


def test_job_options_are_named_once():
    assert set(JobOptionsSerializer().fields) == set(services.JOB_OPTIONS)


def test_both_apis_and_rerun_carry_every_option(api):
    created = submit(api, **OPTIONS)
    compat = api.post(
        "/v1/inference",
        {"model": "wan21_14b", "loras": [], "prompts": [{"prompt": "a cat", **SMALL}], **OPTIONS},
        format="json",
    )
    assert compat.status_code == 200, compat.json()
    rerun = api.post(f"/api/v1/jobs/{created['id']}/rerun/").json()
    for job_id in (created["id"], compat.json()["request_id"], rerun["id"]):
        job = GenerationJob.objects.get(pk=job_id)
        assert {name: getattr(job, name) for name in services.JOB_OPTIONS} == OPTIONS
