"""Idempotency-Key on both submit APIs: a repeat from the same user returns the first job, never a second."""

import threading

import pytest
from django.db import connection

from tests.webapp.test_compat_api import MINIMAL
from tests.webapp.test_jobs_api import SMALL, URL
from webapp.jobs import services
from webapp.jobs.models import GenerationJob

pytestmark = pytest.mark.django_db
BODY = {"loras": [], "prompts": [{"prompt": "a cat", **SMALL}]}


def test_resource_api_repeat_returns_the_first_job_with_200(api):
    first = api.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert first.status_code == 201, first.json()
    again = api.post(URL, {**BODY, "priority": 3}, format="json", HTTP_IDEMPOTENCY_KEY="order-1")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and set(again.json()) == set(first.json())
    assert again.json()["idempotency_key"] == "order-1"
    assert GenerationJob.objects.count() == 1
    other = api.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="order-2")
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    unkeyed = [api.post(URL, BODY, format="json").json()["id"] for _ in range(2)]
    assert len(set(unkeyed)) == 2 and GenerationJob.objects.count() == 4


def test_compat_api_repeat_returns_the_same_answer(api):
    body = {**MINIMAL, "prompts": [{**MINIMAL["prompts"][0], **SMALL}]}
    first = api.post("/v1/inference", body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    again = api.post("/v1/inference", body, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert GenerationJob.objects.count() == 1


def test_keys_are_per_user(api, django_user_model):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    bob = django_user_model.objects.create_user(username="bob", password="pw-bob-12345")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=bob).key}")
    mine = api.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="same")
    theirs = other.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="same")
    assert mine.status_code == theirs.status_code == 201 and mine.json()["id"] != theirs.json()["id"]


@pytest.mark.parametrize("url", [URL, "/v1/inference"])
def test_a_key_longer_than_200_is_refused(api, url):
    response = api.post(url, BODY, format="json", HTTP_IDEMPOTENCY_KEY="x" * 201)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "IDEMPOTENCY_KEY_TOO_LONG"
    assert not GenerationJob.objects.exists()
    ok = api.post(URL, BODY, format="json", HTTP_IDEMPOTENCY_KEY="x" * 200)
    assert ok.status_code == 201


def test_the_constraint_decides_a_race(api, user):
    """Two submits that both passed the lookup: the database keeps one job and both get it."""
    spec = services.job_spec(owner=user, loras=[], options={}, prompts=[{"prompt": "a cat", **SMALL}])
    first = services.job_submit(owner=user, spec=spec, idempotency_key="race")
    real_lookup = services.job_for_idempotency_key
    calls = []

    def blind_once(**kwargs):  # the second submit's lookup ran before the first committed
        calls.append(kwargs)
        return None if len(calls) == 1 else real_lookup(**kwargs)

    services.job_for_idempotency_key = blind_once
    try:
        second = services.job_submit(owner=user, spec=spec, idempotency_key="race")
    finally:
        services.job_for_idempotency_key = real_lookup
    assert second.pk == first.pk and second.replayed and not first.replayed
    assert GenerationJob.objects.filter(idempotency_key="race").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_submits_make_one_job_on_postgres(api, user):
    if connection.vendor != "postgresql":
        pytest.skip("real concurrent transactions: PostgreSQL")
    spec = services.job_spec(owner=user, loras=[], options={}, prompts=[{"prompt": "a cat", **SMALL}])
    results, barrier = [], threading.Barrier(4)

    def go():
        barrier.wait()
        try:
            results.append(services.job_submit(owner=user, spec=spec, idempotency_key="burst").pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert GenerationJob.objects.filter(idempotency_key="burst").count() == 1
