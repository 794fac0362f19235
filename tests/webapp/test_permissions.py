"""Who may do what: shared queue, owner-or-staff changes, private LoRAs, throttles, CSRF, auth, production settings."""

import os
import subprocess
import sys
import uuid

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.settings import api_settings
from rest_framework.test import APIClient
from rest_framework.throttling import ScopedRateThrottle

from tests.conftest import ROOT, TINY_SHAPE
from webapp.jobs.models import GenerationJob, JobStatus
from webapp.loras.models import Lora
from workers.pipeline.checkpoints import write_aitoolkit_lora

JOBS, LORAS, V1 = "/api/v1/jobs/", "/api/v1/loras/", "/v1/inference"
PROMPT = {"prompt": "a cat", "width": 128, "height": 128, "num_frames": 9, "sample_steps": 2}
pytestmark = pytest.mark.django_db


def submit(client, loras=(), status=201):
    response = client.post(JOBS, {"loras": list(loras), "prompts": [PROMPT]}, format="json")
    assert response.status_code == status, response.json()
    return response.json()


def submit_v1(client, loras=(), status=200):
    body = {"model": "wan21_14b", "loras": [{"path": ref} for ref in loras], "prompts": [PROMPT]}
    response = client.post(V1, body, format="json")
    assert response.status_code == status, response.json()
    return response.json()


def upload(client, tmp_path, seed, **fields) -> dict:
    data = write_aitoolkit_lora(tmp_path / f"up{seed}.safetensors", shape=TINY_SHAPE, seed=seed).read_bytes()
    response = client.post(
        LORAS, {"file": SimpleUploadedFile(f"up{seed}.safetensors", data), **fields}, format="multipart"
    )
    assert response.status_code == 201, response.json()
    return response.json()


def expect(response, status, code):
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code


def status_of(job_id):
    return GenerationJob.objects.get(pk=job_id).status


# --- the shared queue; owner-or-staff changes -------------------------------------------------------------


def test_everyone_sees_the_shared_queue(api, bob_api):
    job = submit(api)
    assert [j["id"] for j in bob_api.get(JOBS).json()["results"]] == [job["id"]]
    assert bob_api.get(f"{JOBS}{job['id']}/").json() == job
    assert bob_api.get(f"/v1/requests/{job['id']}/status").json()["status"] == "in_queue"
    assert bob_api.get(f"/v1/requests/{job['id']}/result").status_code == 200


def test_others_may_not_cancel_retry_or_delete_a_job(api, bob_api):
    queued, canceled = submit(api)["id"], submit(api)["id"]
    api.post(f"{JOBS}{canceled}/cancel/")
    expect(bob_api.post(f"{JOBS}{queued}/cancel/"), 403, "PERMISSION_DENIED")
    expect(bob_api.post(f"/v1/requests/{queued}/cancel"), 403, "PERMISSION_DENIED")
    expect(bob_api.post(f"{JOBS}{canceled}/retry/"), 403, "PERMISSION_DENIED")
    expect(bob_api.delete(f"{JOBS}{canceled}/"), 403, "PERMISSION_DENIED")
    expect(bob_api.delete(f"{JOBS}{queued}/"), 403, "PERMISSION_DENIED")
    assert (status_of(queued), status_of(canceled)) == (JobStatus.QUEUED, JobStatus.CANCELED)
    assert GenerationJob.objects.count() == 2


def test_staff_may_cancel_retry_and_delete_any_job(api, staff_api):
    first, second = submit(api)["id"], submit(api)["id"]
    assert staff_api.post(f"/v1/requests/{first}/cancel").json()["status"] == "canceled"
    assert staff_api.post(f"{JOBS}{second}/cancel/").json()["status"] == "canceled"
    assert staff_api.post(f"{JOBS}{second}/retry/").json()["status"] == "queued"
    expect(staff_api.delete(f"{JOBS}{second}/"), 409, "JOB_ACTIVE")
    assert staff_api.delete(f"{JOBS}{first}/").status_code == 204
    assert list(GenerationJob.objects.values_list("pk", flat=True)) == [uuid.UUID(second)]


@pytest.mark.parametrize(
    "status,deleted",
    [
        (JobStatus.QUEUED, False),
        (JobStatus.RUNNING, False),
        (JobStatus.SUCCEEDED, True),
        (JobStatus.FAILED, True),
        (JobStatus.CANCELED, True),
    ],
)
def test_owner_deletes_only_finished_jobs(api, status, deleted):
    job_id = submit(api)["id"]
    GenerationJob.objects.filter(pk=job_id).update(status=status)
    response = api.delete(f"{JOBS}{job_id}/")
    if deleted:
        assert response.status_code == 204 and not GenerationJob.objects.exists()
    else:
        expect(response, 409, "JOB_ACTIVE")
        assert status_of(job_id) == status


def test_only_owner_or_staff_may_delete_a_lora(api, bob_api, staff_api, tmp_path):
    first, second = upload(api, tmp_path, 31), upload(api, tmp_path, 32)
    expect(bob_api.delete(f"{LORAS}{first['id']}/"), 403, "PERMISSION_DENIED")
    assert Lora.objects.count() == 2
    assert staff_api.delete(f"{LORAS}{first['id']}/").status_code == 204
    assert api.delete(f"{LORAS}{second['id']}/").status_code == 204
    assert not Lora.objects.exists()


def test_only_owner_or_staff_may_change_a_prompt_set(api, bob_api):
    prompt_set = api.post("/api/v1/prompt-sets/", {"name": "mine", "items": [{"prompt": "x"}]}, format="json").json()
    expect(
        bob_api.patch(f"/api/v1/prompt-sets/{prompt_set['id']}/", {"name": "taken"}, format="json"),
        403,
        "PERMISSION_DENIED",
    )
    expect(bob_api.delete(f"/api/v1/prompt-sets/{prompt_set['id']}/"), 403, "PERMISSION_DENIED")


# --- LoRA visibility ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["42", "a" * 64, "job_a/job_a.safetensors", "x.safetensors", "team/x"])
def test_upload_names_cannot_shadow_other_references(api, tmp_path, name):
    with (settings.LORA_ROOT / "job_a" / "job_a.safetensors").open("rb") as fh:
        response = api.post(LORAS, {"file": fh, "name": name}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["details"]["name"][0]["code"] == "invalid_name"


@pytest.fixture
def secret(api, tmp_path):
    """Alice's private LoRA (uploads get no relative path: those belong to files under LORA_ROOT)."""
    return upload(api, tmp_path, 41, name="secret-a", visibility="private")


def refs(lora):
    return [lora["name"], str(lora["id"]), lora["sha256"]]


def test_private_lora_is_invisible_to_others(api, bob_api, staff_api, secret):
    assert [lora["name"] for lora in bob_api.get(LORAS).json()["results"]] == []
    assert bob_api.get(LORAS, {"visibility": "private"}).json()["results"] == []
    expect(bob_api.get(f"{LORAS}{secret['id']}/"), 404, "NOT_FOUND")
    expect(bob_api.delete(f"{LORAS}{secret['id']}/"), 404, "NOT_FOUND")
    assert [lora["name"] for lora in api.get(LORAS).json()["results"]] == ["secret-a"]
    assert staff_api.get(f"{LORAS}{secret['id']}/").json()["visibility"] == "private"
    assert Lora.objects.count() == 1


def test_private_lora_is_unusable_by_others_by_any_reference(api, bob_api, secret):
    for ref in refs(secret):
        expect(
            bob_api.post(JOBS, {"loras": [{"lora": ref}], "prompts": [PROMPT]}, format="json"), 404, "LORA_NOT_FOUND"
        )
        expect(
            bob_api.post(V1, {"model": "wan21_14b", "loras": [{"path": ref}], "prompts": [PROMPT]}, format="json"),
            404,
            "LORA_NOT_FOUND",
        )
    assert not GenerationJob.objects.exists() and Lora.objects.count() == 1
    for ref in refs(secret):
        assert submit(api, [{"lora": ref}])["loras"][0]["lora"] == secret["id"]
        submit_v1(api, [ref])
    assert GenerationJob.objects.filter(owner__username="alice").count() == 6


def test_team_lora_is_usable_by_everyone(api, bob_api, tmp_path):
    shared = upload(api, tmp_path, 42, name="team-a")
    assert shared["visibility"] == "team"
    for ref in refs(shared):
        assert submit(bob_api, [{"lora": ref}])["loras"][0]["lora"] == shared["id"]
        submit_v1(bob_api, [ref])
    assert GenerationJob.objects.filter(owner__username="bob").count() == 6


def test_rerun_of_a_job_with_someone_elses_private_lora_is_lora_missing(api, bob_api, secret, tmp_path):
    job = submit(api, [{"lora": "secret-a", "multiplier": 0.5}])
    expect(bob_api.post(f"{JOBS}{job['id']}/rerun/"), 409, "LORA_MISSING")
    assert GenerationJob.objects.count() == 1
    rerun = api.post(f"{JOBS}{job['id']}/rerun/")
    assert rerun.status_code == 201 and rerun.json()["loras"][0]["multiplier"] == 0.5

    shared = submit(api, [{"lora": upload(api, tmp_path, 43)["name"]}])
    rerun = bob_api.post(f"{JOBS}{shared['id']}/rerun/")
    assert rerun.status_code == 201 and rerun.json()["owner"] == "bob"


# --- rate limits and the queued-job cap ------------------------------------------------------------------


@pytest.fixture
def submit_rate(settings, monkeypatch):
    cache.clear()
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"submit": "3/min"}}
    # api_settings reloads on setting_changed, but SimpleRateThrottle.THROTTLE_RATES was bound at import time.
    monkeypatch.setattr(ScopedRateThrottle, "THROTTLE_RATES", api_settings.DEFAULT_THROTTLE_RATES)
    assert ScopedRateThrottle.THROTTLE_RATES == {"submit": "3/min"}
    yield
    cache.clear()


@pytest.mark.parametrize("send", [submit, submit_v1], ids=["jobs", "v1"])
def test_fourth_submission_in_a_minute_is_rate_limited(api, submit_rate, send):
    for _ in range(3):
        send(api)
    response = api.post(
        JOBS if send is submit else V1, {"model": "wan21_14b", "loras": [], "prompts": [PROMPT]}, format="json"
    )
    expect(response, 429, "RATE_LIMITED")
    assert int(response["Retry-After"]) > 0
    assert GenerationJob.objects.count() == 3


def test_both_apis_and_rerun_share_one_budget_per_user(api, bob_api, submit_rate):
    job = submit(api)
    submit_v1(api)
    assert api.post(f"{JOBS}{job['id']}/rerun/").status_code == 201
    expect(api.post(f"{JOBS}{job['id']}/rerun/"), 429, "RATE_LIMITED")
    expect(api.post(V1, {"model": "wan21_14b", "loras": [], "prompts": [PROMPT]}, format="json"), 429, "RATE_LIMITED")
    submit(bob_api)  # another user's budget is untouched
    assert GenerationJob.objects.count() == 4


def test_queued_job_cap_per_user_with_staff_exempt(api, staff_api, settings):
    settings.MAX_QUEUED_JOBS_PER_USER = 2
    first, _ = submit(api), submit(api)
    expect(api.post(JOBS, {"loras": [], "prompts": [PROMPT]}, format="json"), 429, "TOO_MANY_QUEUED_JOBS")
    expect(
        api.post(V1, {"model": "wan21_14b", "loras": [], "prompts": [PROMPT]}, format="json"),
        429,
        "TOO_MANY_QUEUED_JOBS",
    )
    expect(api.post(f"{JOBS}{first['id']}/rerun/"), 429, "TOO_MANY_QUEUED_JOBS")
    assert GenerationJob.objects.count() == 2

    api.post(f"{JOBS}{first['id']}/cancel/")  # only queued jobs count
    submit(api)
    for _ in range(3):
        submit(staff_api)
    assert GenerationJob.objects.filter(status=JobStatus.QUEUED).count() == 5


def test_retry_respects_the_queued_job_cap(api, settings):
    settings.MAX_QUEUED_JOBS_PER_USER = 2
    first = submit(api)["id"]
    api.post(f"{JOBS}{first}/cancel/")
    submit(api), submit(api)
    expect(api.post(f"{JOBS}{first}/retry/"), 429, "TOO_MANY_QUEUED_JOBS")
    assert status_of(first) == JobStatus.CANCELED


# --- sessions, CSRF, anonymous access -----------------------------------------------------------------------


def test_session_posts_need_a_csrf_token(user, tiny_model, lora_files):
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    body = {"loras": [], "prompts": [PROMPT]}
    refused = client.post(JOBS, body, content_type="application/json")
    expect(refused, 403, "PERMISSION_DENIED")
    assert "CSRF" in refused.json()["error"]["message"]
    assert not GenerationJob.objects.exists()

    assert client.get("/admin/login/").status_code == 200
    token = client.cookies["csrftoken"].value
    expect(
        client.post(JOBS, body, content_type="application/json", HTTP_X_CSRFTOKEN="x" * 32), 403, "PERMISSION_DENIED"
    )
    accepted = client.post(JOBS, body, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 201 and accepted.json()["owner"] == user.username


def test_token_clients_need_no_csrf_token(user, tiny_model, lora_files):
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    assert client.post(JOBS, {"loras": [], "prompts": [PROMPT]}, format="json").status_code == 201


ANY_ID = uuid.uuid4()


@pytest.mark.parametrize(
    "method,path",
    [
        ("get", "/api/v1/"),
        ("get", JOBS),
        ("post", JOBS),
        ("get", f"{JOBS}{ANY_ID}/"),
        ("delete", f"{JOBS}{ANY_ID}/"),
        ("post", f"{JOBS}{ANY_ID}/cancel/"),
        ("post", f"{JOBS}{ANY_ID}/retry/"),
        ("post", f"{JOBS}{ANY_ID}/rerun/"),
        ("get", LORAS),
        ("post", LORAS),
        ("get", f"{LORAS}1/"),
        ("delete", f"{LORAS}1/"),
        ("get", "/api/v1/prompt-sets/"),
        ("post", "/api/v1/prompt-sets/"),
        ("get", "/api/v1/prompt-sets/1/"),
        ("patch", "/api/v1/prompt-sets/1/"),
        ("delete", "/api/v1/prompt-sets/1/"),
        ("get", "/api/v1/outputs/1/video"),
        ("get", "/api/v1/outputs/1/poster"),
        ("get", "/api/v1/outputs/1/webp"),
        ("post", V1),
        ("get", f"/v1/requests/{ANY_ID}/status"),
        ("get", f"/v1/requests/{ANY_ID}/result"),
        ("post", f"/v1/requests/{ANY_ID}/cancel"),
        ("get", "/v1/models"),
    ],
)
def test_anonymous_is_401_on_every_api_resource(method, path):
    expect(getattr(APIClient(), method)(path), 401, "NOT_AUTHENTICATED")
    assert not GenerationJob.objects.exists()


def test_health_is_public():
    assert APIClient().get("/health").json() == {"status": "healthy"}
    assert APIClient(HTTP_AUTHORIZATION="Token not-a-real-token").get("/health").status_code == 200


# --- production settings ------------------------------------------------------------------------------------

SETUP = "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='webapp.settings'; django.setup()"


def run_settings(tmp_path, code, **env):
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SECRET_KEY", "DEBUG", "ALLOWED_HOSTS", "DJANGO_SETTINGS_MODULE")
    }
    environ.update(DJANGO_ENV="production", VAR_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120
    )


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = run_settings(tmp_path, SETUP)
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_production_turns_debug_off_and_cookies_secure(tmp_path):
    code = SETUP + (
        "; from django.conf import settings; print(settings.DEBUG, settings.SESSION_COOKIE_SECURE, "
        "settings.CSRF_COOKIE_SECURE, settings.ALLOWED_HOSTS)"
    )
    result = run_settings(tmp_path, code, SECRET_KEY="s" * 50, ALLOWED_HOSTS="queue.example.com, api.example.com")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False True True ['queue.example.com', 'api.example.com']"
