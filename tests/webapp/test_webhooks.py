"""Job webhooks without a network: signatures, URL rules at submit, secrets, the outbox rows each move writes."""

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime

import pytest

from tests.webapp.test_compat_api import MINIMAL
from tests.webapp.test_jobs_api import SMALL, URL
from webapp.core.errors import ApiError
from webapp.jobs import services
from webapp.jobs.models import GenerationJob, WebhookEvent
from webapp.jobs.webhooks import webhook_sign, webhook_url_check, webhook_verify

pytestmark = pytest.mark.django_db
PUBLIC_IP = "93.184.216.34"
HOOK = "https://hooks.example.com/in?token=1"
BODY = {"loras": [], "prompts": [{"prompt": "a cat", **SMALL}]}


@pytest.fixture
def dns(dns):
    """The webhook host resolving to a public address."""
    dns["hooks.example.com"] = [PUBLIC_IP]
    return dns


# --- signatures ---------------------------------------------------------------------------------------------


def test_signature_is_the_hand_computed_hmac():
    raw = bytes(range(24))
    key = "whsec_" + base64.b64encode(raw).decode()
    body = '{"event":"completed"}'
    expected = base64.b64encode(hmac.new(raw, b'msg_1.1700000000.{"event":"completed"}', hashlib.sha256).digest())
    assert webhook_sign(key=key, msg_id="msg_1", timestamp=1700000000, body=body) == "v1," + expected.decode()


def test_signature_verifies_and_tampering_does_not():
    key = "whsec_" + base64.b64encode(b"k" * 24).decode()
    now = int(time.time())
    headers = {"webhook-id": "msg_2", "webhook-timestamp": str(now)}
    headers["webhook-signature"] = "v1,bogus " + webhook_sign(key=key, msg_id="msg_2", timestamp=now, body="{}")
    assert webhook_verify(key=key, headers=headers, body="{}")
    assert not webhook_verify(key=key, headers=headers, body="{ }")
    assert not webhook_verify(key=key, headers={**headers, "webhook-id": "msg_3"}, body="{}")
    old = {**headers, "webhook-timestamp": str(now - 3600)}
    assert not webhook_verify(key=key, headers=old, body="{}")


def test_the_standardwebhooks_package_agrees():
    standardwebhooks = pytest.importorskip("standardwebhooks")
    key = "whsec_" + base64.b64encode(b"s" * 24).decode()
    now = int(time.time())
    headers = {"webhook-id": "msg_x", "webhook-timestamp": str(now)}
    headers["webhook-signature"] = webhook_sign(key=key, msg_id="msg_x", timestamp=now, body='{"a":1}')
    assert standardwebhooks.Webhook(key).verify('{"a":1}', headers) == {"a": 1}


# --- secrets ------------------------------------------------------------------------------------------------


def test_secret_is_made_once_and_rotates(api):
    first = api.get("/api/v1/webhooks/secret").json()["key"]
    assert first.startswith("whsec_") and len(base64.b64decode(first[6:])) >= 24
    assert api.get("/api/v1/webhooks/secret").json()["key"] == first
    rotated = api.post("/api/v1/webhooks/secret/rotate")
    assert rotated.status_code == 200 and rotated.json()["key"] != first
    assert api.get("/api/v1/webhooks/secret").json()["key"] == rotated.json()["key"]
    assert api.post("/api/v1/webhooks/secret").status_code == 405
    assert api.get("/api/v1/webhooks/secret/rotate").status_code == 405


def test_secret_needs_a_signed_in_user(client):
    assert client.get("/api/v1/webhooks/secret").status_code in (401, 403)


# --- URL rules ----------------------------------------------------------------------------------------------


def refused(url) -> str:
    with pytest.raises(ApiError) as info:
        webhook_url_check(url=url)
    return info.value.code


def test_public_https_urls_pass(dns):
    assert webhook_url_check(url=HOOK) == HOOK


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "10.1.2.3", "192.168.0.9", "169.254.169.254", "::1", "fe80::1", "::ffff:10.0.0.1"]
)
def test_private_loopback_and_link_local_addresses_are_refused_after_dns(dns, address):
    dns["hooks.example.com"] = [PUBLIC_IP, address]  # every address must be public, not just the first
    assert refused(HOOK) == "WEBHOOK_URL_PRIVATE_ADDRESS"


def test_other_refusals(dns):
    assert refused("http://hooks.example.com/in") == "WEBHOOK_URL_NOT_HTTPS"
    assert refused("https://nowhere.example.net/in") == "WEBHOOK_URL_UNRESOLVABLE"
    for url in (
        "ftp://hooks.example.com/",
        "https://u:p@hooks.example.com/",
        "https:///x",
        "https://a b/",
        "https://hooks.example.com/hé",  # http.client can't send it: refused now, not failing at every delivery
    ):
        assert refused(url) == "WEBHOOK_URL_INVALID"


def test_allowed_hosts_are_exempt_from_https_and_public_addresses(dns, settings):
    dns["receiver.internal"] = ["10.0.0.5"]
    settings.WEBHOOK_ALLOWED_HOSTS = ["receiver.internal", "127.0.0.1"]
    assert webhook_url_check(url="http://receiver.internal:8080/hook")
    assert webhook_url_check(url="http://127.0.0.1:9/hook")
    assert refused("http://localhost:9/hook") == "WEBHOOK_URL_NOT_HTTPS"  # exact names only
    dns["other.internal"] = ["10.0.0.6"]
    assert refused("https://other.internal/hook") == "WEBHOOK_URL_PRIVATE_ADDRESS"


@pytest.mark.parametrize("url", [URL, "/v1/inference"])
def test_submit_refuses_a_bad_webhook_with_its_code(api, dns, url):
    dns["hooks.example.com"] = ["10.0.0.1"]
    body = BODY if url == URL else {**MINIMAL, "prompts": [{**MINIMAL["prompts"][0], **SMALL}]}
    response = api.post(url, {**body, "webhook": HOOK}, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "WEBHOOK_URL_PRIVATE_ADDRESS"
    response = api.post(url, {**body, "webhook": "http://hooks.example.com/"}, format="json")
    assert response.json()["error"]["code"] == "WEBHOOK_URL_NOT_HTTPS"
    response = api.post(url, {**body, "webhook": HOOK, "webhook_events_filter": ["logs"]}, format="json")
    assert response.status_code == 400
    assert not GenerationJob.objects.exists()


# --- the outbox -----------------------------------------------------------------------------------------------


def submitted(api, **fields):
    response = api.post(URL, {**BODY, "webhook": HOOK, **fields}, format="json")
    assert response.status_code == 201, response.json()
    return GenerationJob.objects.get(pk=response.json()["id"])


def test_both_apis_take_the_webhook_options(api, dns):
    job = submitted(api)
    assert (job.webhook, job.webhook_events_filter) == (HOOK, ["completed"])
    compat = api.post(
        "/v1/inference",
        {
            **MINIMAL,
            "prompts": [{**MINIMAL["prompts"][0], **SMALL}],
            "webhook": HOOK,
            "webhook_events_filter": ["start"],
        },
        format="json",
    )
    job = GenerationJob.objects.get(pk=compat.json()["request_id"])
    assert (job.webhook, job.webhook_events_filter) == (HOOK, ["start"])


def test_each_move_writes_the_events_the_filter_asks_for(api, dns, settings, django_capture_on_commit_callbacks):
    settings.WEBHOOK_PROGRESS_INTERVAL_S = 3600
    job = submitted(api, webhook_events_filter=["start", "progress", "output", "completed"])
    with django_capture_on_commit_callbacks() as sent:
        running = services.job_start(job_id=job.pk, worker="w@host")
        for step in (1, 2):  # the second is within WEBHOOK_PROGRESS_INTERVAL_S: no event
            assert services.job_report_progress(job=running, prompt_index=0, step=step, steps=2)
        params = {**running.prompts[0], "seed": 1}
        services.job_add_output(
            job=running, index=0, video="v.mp4", poster="", webp="", params=params, scheduler="euler", record={}
        )
        services.job_succeed(job=running, timings={})
    assert len(sent) == 4  # one delivery message per event, sent after each commit
    events = list(WebhookEvent.objects.filter(job=job))
    assert [e.event for e in events] == ["start", "progress", "output", "completed"]
    done = json.loads(events[-1].body)
    assert done["event"] == "completed" and done["status"] == "succeeded" and done["request_id"] == str(job.pk)
    assert len(done["outputs"]["videos"]) == 1 and done["progress"]["fraction"] == 1.0
    assert json.loads(events[0].body)["status"] == "in_progress"
    times = [datetime.fromisoformat(json.loads(e.body)["timestamp"]) for e in events]  # when each happened
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    shown = api.get(f"/api/v1/jobs/{job.pk}/").json()
    assert [d["event"] for d in shown["webhook_deliveries"]] == ["start", "progress", "output", "completed"]
    assert shown["webhook_deliveries"][0]["id"].startswith("msg_") and shown["webhook"] == HOOK


def test_default_filter_sends_only_completed_and_cancel_counts(api, dns):
    job = submitted(api)
    running = services.job_start(job_id=job.pk, worker="w@host")
    services.job_report_progress(job=running, prompt_index=0, step=1, steps=2)
    services.job_cancel(job=job, actor=job.owner)
    assert [e.event for e in WebhookEvent.objects.filter(job=job)] == ["completed"]
    assert json.loads(WebhookEvent.objects.get(job=job).body)["status"] == "canceled"


def test_no_webhook_no_events(api):
    response = api.post(URL, BODY, format="json")
    services.job_start(job_id=response.json()["id"], worker="w@host")
    assert not WebhookEvent.objects.exists()
    assert response.json()["webhook_deliveries"] == [] and response.json()["webhook_events_filter"] == ["completed"]


def test_others_do_not_see_the_webhook(api, dns, django_user_model):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    job = submitted(api)
    bob = django_user_model.objects.create_user(username="bob", password="pw-bob-12345")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=bob).key}")
    shown = other.get(f"/api/v1/jobs/{job.pk}/").json()
    assert shown["webhook"] is None and shown["webhook_deliveries"] == []


def test_a_rerun_keeps_the_webhook_only_for_its_owner(api, dns, django_user_model):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    job = submitted(api, webhook_events_filter=["start", "completed"])
    mine = api.post(f"/api/v1/jobs/{job.pk}/rerun/")
    assert (mine.json()["webhook"], mine.json()["webhook_events_filter"]) == (HOOK, ["start", "completed"])
    bob = django_user_model.objects.create_user(username="bob", password="pw-bob-12345")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=bob).key}")
    theirs = other.post(f"/api/v1/jobs/{job.pk}/rerun/")
    assert theirs.status_code == 201, theirs.json()
    rerun = GenerationJob.objects.get(pk=theirs.json()["id"])
    assert (rerun.webhook, rerun.webhook_events_filter) == ("", ["completed"])  # alice's endpoint is hers
