"""Load: 20 concurrent clients submit 200 jobs and poll status against gunicorn while a worker is busy;
no errors, no lost or duplicated jobs, and the queue drains. Latencies go to var/.../load.json."""

import json
from pathlib import Path

from django.conf import settings
from rest_framework.authtoken.models import Token

from bench.load import run_load
from tests.conftest import wait_for
from webapp.jobs.models import GenerationJob, JobOutput
from webapp.jobs.services import job_spec, job_submit

CLIENTS, JOBS_EACH, POLLS = 20, 10, 5


def test_two_hundred_jobs_from_concurrent_clients(web_server, start_worker, django_user_model):
    tokens = [
        Token.objects.create(user=django_user_model.objects.create_user(f"client{i}")).key for i in range(CLIENTS)
    ]
    owner = django_user_model.objects.get(username="client0")
    busy = job_submit(
        owner=owner,
        spec=job_spec(
            owner=owner,
            loras=[],
            options={},
            prompts=[
                {"prompt": "keeps the worker busy", "width": 512, "height": 512, "num_frames": 17, "sample_steps": 40}
            ],
        ),
    )
    start_worker("load")

    result = run_load(web_server, tokens, jobs_per_client=JOBS_EACH, status_polls=POLLS)
    summary = result.summary()
    (Path(settings.VAR_DIR) / "load.json").write_text(json.dumps(summary, indent=1))
    print(summary)
    assert result.errors == []
    assert summary["jobs"] == summary["unique_ids"] == CLIENTS * JOBS_EACH

    ids = result.submitted + [str(busy.pk)]
    wait_for(lambda: GenerationJob.objects.filter(pk__in=ids, status="succeeded").count() == len(ids), timeout=600)
    assert set(GenerationJob.objects.filter(pk__in=ids).values_list("attempts", flat=True)) == {1}
    assert JobOutput.objects.filter(job__in=ids).count() == len(ids)  # one output each: none ran twice
