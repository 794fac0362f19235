"""Webhook delivery to a real loopback receiver: signed, retried after a failure, redirects not followed,
bounded in time, still delivered after the job is deleted, and a job rendered end to end by a real worker
delivers its `completed` event."""

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from tests.conftest import SMALL, wait_for
from webapp.jobs import services, webhooks
from webapp.jobs.models import DeliveryStatus, GenerationJob, WebhookEvent
from webapp.jobs.webhooks import retry_delay, webhook_deliver, webhook_verify

BODY = {"loras": [], "prompts": [{"prompt": "a cat", **SMALL, "sample_steps": 2}]}


class Receiver:
    """http.server in a thread; `answers` is the list of status codes to give, then 200."""

    def __init__(self):
        self.received, self.answers, self.delay, self.drip = [], [], 0.0, False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                receiver.received.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                time.sleep(receiver.delay)
                if receiver.drip:  # a header line a byte at a time, never finished
                    try:
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                        for _ in range(1000):
                            self.wfile.write(b"a")
                            time.sleep(0.05)
                    except OSError:
                        return
                code = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(code)
                if 300 <= code < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]  # exempt from https and public addresses
    settings.WEBHOOK_TIMEOUT_S = 2
    receiver = Receiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def sent(monkeypatch):
    """The delivery messages the services send after commit: (event id, attempt, countdown)."""
    messages = []
    monkeypatch.setattr(
        webhooks.celery_app,
        "send_task",
        lambda name, args, queue, countdown=None: messages.append((*args, countdown)),
    )
    return messages


def headers_of(request) -> dict:
    return {k.lower(): v for k, v in request["headers"].items()}


def run_job_as_a_worker_does(job_id):
    job = services.job_start(job_id=job_id, worker="w@host")
    services.job_report_progress(job=job, prompt_index=0, step=1, steps=2)
    params = {**job.prompts[0], "seed": 1}
    services.job_add_output(
        job=job, index=0, video="v.mp4", poster="", webp="", params=params, scheduler="euler", record={}
    )
    return services.job_succeed(job=job, timings={})


def deliver(event_id):
    """What the event's next delivery message does."""
    return webhook_deliver(event_id=event_id, attempt=WebhookEvent.objects.get(pk=event_id).attempts + 1)


def deliver_pending():
    return [deliver(e.pk) for e in WebhookEvent.objects.filter(status=DeliveryStatus.PENDING)]


@pytest.mark.django_db
def test_completed_delivery_verifies_with_the_secret_from_the_api(api, receiver, sent):
    key = api.get("/api/v1/webhooks/secret").json()["key"]
    created = api.post("/api/v1/jobs/", {**BODY, "webhook": receiver.url}, format="json")
    assert created.status_code == 201, created.json()
    run_job_as_a_worker_does(created.json()["id"])
    assert deliver_pending() == ["delivered"]
    (request,) = receiver.received
    headers = headers_of(request)
    assert headers["webhook-id"].startswith("msg_") and abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert webhook_verify(key=key, headers=headers, body=request["body"])
    body = json.loads(request["body"])
    assert body["event"] == "completed" and body["status"] == "succeeded"
    assert body["request_id"] == created.json()["id"] and len(body["outputs"]["videos"]) == 1
    (delivery,) = api.get(f"/api/v1/jobs/{created.json()['id']}/").json()["webhook_deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"][0]["status_code"] == 200
    assert delivery["id"] == headers["webhook-id"]


@pytest.mark.django_db
def test_a_message_queued_before_attempts_were_numbered_is_the_next_attempt(api, receiver, sent):
    created = api.post("/api/v1/jobs/", {**BODY, "webhook": receiver.url}, format="json").json()
    run_job_as_a_worker_does(created["id"])
    (event,) = WebhookEvent.objects.filter(job_id=created["id"])
    assert webhook_deliver(event_id=event.pk, attempt=None) == "delivered"
    assert webhook_deliver(event_id=event.pk, attempt=None) == "skipped" and len(receiver.received) == 1


@pytest.mark.django_db
def test_the_standardwebhooks_package_verifies_a_real_delivery(api, receiver, sent):
    standardwebhooks = pytest.importorskip("standardwebhooks")
    key = api.get("/api/v1/webhooks/secret").json()["key"]
    created = api.post("/api/v1/jobs/", {**BODY, "webhook": receiver.url}, format="json").json()
    run_job_as_a_worker_does(created["id"])
    deliver_pending()
    (request,) = receiver.received
    assert standardwebhooks.Webhook(key).verify(request["body"], headers_of(request))["event"] == "completed"


@pytest.mark.django_db
def test_a_failed_attempt_is_retried_with_backoff_and_the_same_id(
    api, receiver, sent, client, django_capture_on_commit_callbacks
):
    receiver.answers = [500]
    created = api.post("/api/v1/jobs/", {**BODY, "webhook": receiver.url}, format="json").json()
    run_job_as_a_worker_does(created["id"])
    event = WebhookEvent.objects.get(job_id=created["id"])
    with django_capture_on_commit_callbacks(execute=True):
        assert webhook_deliver(event_id=event.pk, attempt=1) == "pending"
    event.refresh_from_db()
    assert event.attempts == 1 and event.next_attempt_at is not None
    assert sent == [(str(event.pk), 2, 10.0)]  # attempt 2, WEBHOOK_RETRY_BASE_S later (in tests: not run)
    assert webhook_deliver(event_id=event.pk, attempt=1) == "skipped"  # a late copy of the first message
    assert len(receiver.received) == 1 and len(sent) == 1  # posted nothing, started no second retry chain
    assert webhook_deliver(event_id=event.pk, attempt=2) == "delivered"
    assert webhook_deliver(event_id=event.pk, attempt=2) == "skipped"  # a duplicate message posts nothing
    first, second = receiver.received
    assert headers_of(first)["webhook-id"] == headers_of(second)["webhook-id"] and first["body"] == second["body"]
    attempts = api.get(f"/api/v1/jobs/{created['id']}/").json()["webhook_deliveries"][0]["attempts"]
    assert [(a["status_code"], a["error"]) for a in attempts] == [(500, "HTTP 500"), (200, "")]
    client.force_login(GenerationJob.objects.get(pk=created["id"]).owner)
    page = client.get(f"/jobs/{created['id']}/").content.decode()
    assert "Webhook deliveries" in page and "HTTP 500" in page


@pytest.mark.django_db
def test_redirects_are_not_followed_and_timeouts_count_as_failures(api, receiver, sent, settings):
    """(Retry messages go out on commit, which these tests' transaction never reaches.)"""
    receiver.answers = [302]
    created = api.post("/api/v1/jobs/", {**BODY, "webhook": receiver.url}, format="json").json()
    run_job_as_a_worker_does(created["id"])
    event = WebhookEvent.objects.get(job_id=created["id"])
    assert deliver(event.pk) == "pending"
    assert [r["path"] for r in receiver.received] == ["/hook"]  # /elsewhere never asked
    settings.WEBHOOK_TIMEOUT_S = 0.3
    receiver.delay = 1.0
    assert deliver(event.pk) == "pending"
    settings.WEBHOOK_RETRY_FOR_S = 0  # past the retry window: the next failure gives up
    receiver.answers = [503]
    receiver.delay = 0
    assert deliver(event.pk) == "failed"
    errors = [a.error for a in event.attempt_log.all()]
    assert errors[0].startswith("HTTP 302") and "timed out" in errors[1] and errors[2] == "HTTP 503"
    event.refresh_from_db()
    assert (event.status, event.attempts, event.next_attempt_at) == ("failed", 3, None)


def test_backoff_doubles_from_10s_to_a_10_minute_cap_for_over_an_hour(settings):
    delays = [retry_delay(n) for n in range(1, 13)]
    assert delays[:7] == [10, 20, 40, 80, 160, 320, 600] and set(delays[7:]) == {600}
    elapsed, attempts = 0, 1
    while elapsed < settings.WEBHOOK_RETRY_FOR_S:
        elapsed += retry_delay(attempts)
        attempts += 1
    assert elapsed >= 3600 and attempts <= 15


@pytest.mark.django_db
def test_a_refused_address_at_delivery_is_recorded(api, receiver, sent, settings):
    created = api.post("/api/v1/jobs/", {**BODY, "webhook": receiver.url}, format="json").json()
    run_job_as_a_worker_does(created["id"])
    settings.WEBHOOK_ALLOWED_HOSTS = []  # no longer exempt: http and loopback are refused before connecting
    event = WebhookEvent.objects.get(job_id=created["id"])
    deliver(event.pk)
    assert event.attempt_log.get().error.startswith("WEBHOOK_URL_NOT_HTTPS") and not receiver.received


@pytest.mark.django_db
def test_a_receiver_dripping_its_answer_is_cut_off(api, receiver, sent, settings):
    settings.WEBHOOK_TIMEOUT_S = 0.3  # per read; the drip never waits that long, so only the total bounds it
    receiver.drip = True
    created = api.post("/api/v1/jobs/", {**BODY, "webhook": receiver.url}, format="json").json()
    run_job_as_a_worker_does(created["id"])
    event = WebhookEvent.objects.get(job_id=created["id"])
    started = time.monotonic()
    assert deliver(event.pk) == "pending"
    assert time.monotonic() - started < 3
    assert event.attempt_log.get().error == "TimeoutError: timed out: no complete answer within 0.6 s"


@pytest.mark.django_db
def test_an_unexpected_error_is_a_failed_attempt_and_old_events_are_given_up(api, receiver, sent, monkeypatch):
    created = api.post("/api/v1/jobs/", {**BODY, "webhook": receiver.url}, format="json").json()
    run_job_as_a_worker_does(created["id"])
    event = WebhookEvent.objects.get(job_id=created["id"])
    WebhookEvent.objects.filter(pk=event.pk).update(url=receiver.url + "é")  # written before URLs had to be ASCII
    assert deliver(event.pk) == "pending"

    def broken(**kwargs):
        raise UnicodeEncodeError("ascii", "hé", 1, 2, "ordinal not in range(128)")

    monkeypatch.setattr(webhooks, "_post", broken)
    assert deliver(event.pk) == "pending"
    errors = [a.error for a in event.attempt_log.all()]
    assert errors[0].startswith("WEBHOOK_URL_INVALID") and errors[1].startswith("UnicodeEncodeError")
    assert not receiver.received
    sent.clear()
    hours_ago = timezone.now() - timedelta(hours=2)
    WebhookEvent.objects.filter(pk=event.pk).update(created_at=hours_ago, next_attempt_at=hours_ago)
    assert webhooks.webhook_resend_due() == 0 and not sent
    event.refresh_from_db()
    assert event.status == "failed" and event.finished_at is not None


@pytest.mark.django_db
def test_a_deleted_jobs_events_are_still_delivered_signed(api, receiver, sent):
    key = api.get("/api/v1/webhooks/secret").json()["key"]
    created = api.post("/api/v1/jobs/", {**BODY, "webhook": receiver.url}, format="json").json()
    assert api.post(f"/api/v1/jobs/{created['id']}/cancel/").status_code == 200
    assert api.delete(f"/api/v1/jobs/{created['id']}/").status_code == 204
    assert not GenerationJob.objects.exists()
    assert deliver_pending() == ["delivered"]
    (request,) = receiver.received
    assert webhook_verify(key=key, headers=headers_of(request), body=request["body"])
    body = json.loads(request["body"])
    assert (body["event"], body["status"], body["request_id"]) == ("completed", "canceled", created["id"])


@pytest.mark.django_db
def test_an_event_whose_owner_was_deleted_fails_and_is_never_sent_unsigned(api, receiver, sent):
    created = api.post("/api/v1/jobs/", {**BODY, "webhook": receiver.url}, format="json").json()
    run_job_as_a_worker_does(created["id"])
    GenerationJob.objects.get(pk=created["id"]).owner.delete()
    assert deliver_pending() == ["failed"]
    assert not receiver.received and not sent
    (attempt,) = WebhookEvent.objects.get().attempt_log.all()
    assert attempt.error.startswith("WEBHOOK_OWNER_DELETED")


@pytest.mark.django_db(transaction=True)
def test_a_job_rendered_by_a_real_worker_delivers_completed(api, celery_worker, receiver):
    key = api.get("/api/v1/webhooks/secret").json()["key"]
    body = {**BODY, "webhook": receiver.url, "webhook_events_filter": ["start", "completed"]}
    created = api.post("/api/v1/jobs/", body, format="json")
    assert created.status_code == 201, created.json()
    job_id = created.json()["id"]
    wait_for(lambda: GenerationJob.objects.get(pk=job_id).is_finished)
    assert GenerationJob.objects.get(pk=job_id).status == "succeeded"
    # The worker only consumes the GPU queue; the CPU queue's task is run here, in-process.
    assert deliver_pending() == ["delivered", "delivered"]
    start, done = receiver.received
    assert [json.loads(r["body"])["event"] for r in (start, done)] == ["start", "completed"]
    assert webhook_verify(key=key, headers=headers_of(done), body=done["body"])
    assert json.loads(done["body"])["outputs"]["videos"][0]["width"] == 128
