"""Job webhooks (Standard Webhooks): URL rules, per-user secrets, signing, the outbox and delivery.

- A webhook URL is https and resolves only to public addresses (the rules of LoRA URLs, `webapp/core/outbound.py`),
  unless its host is named exactly in WEBHOOK_ALLOWED_HOSTS, which exempts it from both; checked at submit
  (`webhook_url_check`) and again, DNS included, at every delivery. Redirects are never followed.
- An event is a `WebhookEvent` row written by `webhook_emit` in the transaction of the job change that causes
  it (an outbox); its body is frozen then. After commit the CPU queue's `workers.deliver_webhook` posts it
  (`webhook_deliver`), at least once: a failure or timeout is retried WEBHOOK_RETRY_BASE_S, doubling, at most
  WEBHOOK_RETRY_MAX_S apart, until WEBHOOK_RETRY_FOR_S after the event; then it is marked failed.
- Signature: `v1,<base64 HMAC-SHA256(secret bytes, "{webhook-id}.{webhook-timestamp}.{body}")>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import logging
import secrets
import ssl
import time
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework.utils.encoders import JSONEncoder

from webapp.core.errors import ApiError
from webapp.core.outbound import AddressNotPublic, VettedHTTPSConnection, public_address
from workers.broker import CPU_QUEUE
from workers.celery_app import app as celery_app

from .models import DeliveryStatus, GenerationJob, WebhookAttempt, WebhookEvent, WebhookSecret

log = logging.getLogger(__name__)
DELIVER_TASK = "workers.deliver_webhook"
SECRET_PREFIX = "whsec_"


# --- URLs ----------------------------------------------------------------------------------------------


def _refuse(code: str, message: str, *, url: str, **details) -> ApiError:
    return ApiError(code, message, details={"webhook": [{"code": code, "message": message}], "url": url, **details})


def _allowed(host: str) -> bool:
    return host.lower() in {h.strip().strip("[]").lower() for h in settings.WEBHOOK_ALLOWED_HOSTS or [] if h.strip()}


def _vet(url: str) -> tuple[str, str, int, str, bool]:
    """(scheme, host, port, path, allowed) of a webhook URL, or the ApiError refusing it (no network)."""
    try:
        if not url or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
            raise ValueError("empty, or a control character or whitespace")
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _refuse("WEBHOOK_URL_INVALID", "The webhook URL is malformed.", url=url) from None
    host = parts.hostname
    if "@" in parts.netloc or not host or not host.isascii() or parts.scheme.lower() not in ("https", "http"):
        raise _refuse("WEBHOOK_URL_INVALID", "The webhook URL needs an https scheme, a host and no password.", url=url)
    allowed = _allowed(host)
    if parts.scheme.lower() != "https" and not allowed:
        raise _refuse("WEBHOOK_URL_NOT_HTTPS", "Webhook URLs must use https.", url=url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme.lower(), host, port or (443 if parts.scheme.lower() == "https" else 80), path, allowed


def _address(host: str, port: int, url: str) -> str:
    """One address of host; every address it resolves to must be public."""
    try:
        return public_address(host=host, port=port)
    except (OSError, UnicodeError):
        raise _refuse("WEBHOOK_URL_UNRESOLVABLE", f"Could not resolve {host!r}.", url=url) from None
    except AddressNotPublic:
        raise _refuse(
            "WEBHOOK_URL_PRIVATE_ADDRESS", f"{host!r} resolves to an address that is not public.", url=url, host=host
        ) from None


def webhook_url_check(*, url: str) -> str:
    """The URL if a webhook may be sent to it (resolving its host once); a WEBHOOK_URL_* ApiError otherwise."""
    _, host, port, _, allowed = _vet(url)
    if not allowed:
        _address(host, port, url)
    return url


# --- secrets and signatures ------------------------------------------------------------------------------


def _new_key() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def webhook_secret_get(*, user) -> str:
    """The user's signing secret, made on first use."""
    secret, _ = WebhookSecret.objects.get_or_create(user=user, defaults={"key": _new_key()})
    return secret.key


def webhook_secret_rotate(*, user) -> str:
    """A new signing secret; deliveries from now on (retries included) are signed with it."""
    secret, _ = WebhookSecret.objects.update_or_create(user=user, defaults={"key": _new_key()})
    return secret.key


def webhook_sign(*, key: str, msg_id: str, timestamp: int, body: str) -> str:
    raw = base64.b64decode(key.removeprefix(SECRET_PREFIX))
    digest = hmac.new(raw, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_verify(*, key: str, headers: dict, body: str, tolerance_s: int = 300) -> bool:
    """What a receiver does: a signature of the list matches, and the timestamp is recent."""
    msg_id, timestamp = headers["webhook-id"], int(headers["webhook-timestamp"])
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = webhook_sign(key=key, msg_id=msg_id, timestamp=timestamp, body=body)
    return any(hmac.compare_digest(expected, sig) for sig in headers["webhook-signature"].split())


# --- the outbox --------------------------------------------------------------------------------------------


class _Base:
    """build_absolute_uri for bodies written outside a request: WEBHOOK_PUBLIC_URL + the path."""

    def build_absolute_uri(self, location: str) -> str:
        return settings.WEBHOOK_PUBLIC_URL.rstrip("/") + location


def webhook_body(job: GenerationJob, event: str) -> str:
    """The job as /v1/requests/<id>/status and /result show it, plus "event"."""
    from .compat import result_body, status_body  # compat imports services, which imports this module

    data = {**status_body(job), **result_body(job, _Base()), "event": event}
    return json.dumps(data, cls=JSONEncoder, separators=(",", ":"))


def webhook_emit(*, job: GenerationJob, event: str) -> WebhookEvent | None:
    """Write the event's row if the job wants it, and post it once the surrounding transaction commits.
    Call inside the transaction that makes the change; progress at most every WEBHOOK_PROGRESS_INTERVAL_S."""
    if not job.webhook or event not in (job.webhook_events_filter or []):
        return None
    if event == "progress":
        since = timezone.now() - timedelta(seconds=settings.WEBHOOK_PROGRESS_INTERVAL_S)
        if WebhookEvent.objects.filter(job=job, event="progress", created_at__gt=since).exists():
            return None
    row = WebhookEvent.objects.create(job=job, event=event, url=job.webhook, body=webhook_body(job, event))
    _send(row.pk, countdown=0)
    return row


def _send(event_id, *, countdown: float) -> None:
    def send():
        celery_app.send_task(DELIVER_TASK, args=[str(event_id)], queue=CPU_QUEUE, countdown=countdown or None)

    transaction.on_commit(send, robust=True)  # a broker outage: webhook_resend_due sends it again


def webhook_resend_due(*, grace_s: float = 300) -> int:
    """Re-send pending events whose message seems lost (due for longer than grace_s); the reconciler calls this."""
    before = timezone.now() - timedelta(seconds=grace_s)
    due = WebhookEvent.objects.filter(status=DeliveryStatus.PENDING, created_at__lt=before).exclude(
        next_attempt_at__gt=before
    )
    count = 0
    for event_id in due.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            _send(event_id, countdown=0)
        count += 1
    return count


# --- delivery ----------------------------------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: base, doubling, capped."""
    return min(settings.WEBHOOK_RETRY_BASE_S * 2 ** max(0, attempts - 1), settings.WEBHOOK_RETRY_MAX_S)


def _post(*, url: str, headers: dict, body: bytes) -> int:
    """POST once, following no redirect: the status code; refusals raise ApiError, network failures OSError."""
    scheme, host, port, path, allowed = _vet(url)
    timeout = settings.WEBHOOK_TIMEOUT_S
    if allowed:  # exempt: the host as named, http or https
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        conn = cls(host, port=port, timeout=timeout)
    else:  # connect to the address vetted now, so a second DNS answer cannot point elsewhere
        address = _address(host, port, url)
        conn = VettedHTTPSConnection(
            host, address=address, port=port, timeout=timeout, context=ssl.create_default_context()
        )
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(64 * 1024)
        return response.status
    finally:
        conn.close()


def webhook_deliver(*, event_id) -> str:
    """One attempt at an event: POST it signed, record the attempt, then done, retried later, or failed."""
    event = WebhookEvent.objects.select_related("job__owner").filter(pk=event_id).first()
    if event is None or event.status != DeliveryStatus.PENDING:
        return "skipped"
    owner = event.job.owner
    key = webhook_secret_get(user=owner) if owner is not None else None
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "wan-render-queue-webhooks",
        "webhook-id": event.message_id,
        "webhook-timestamp": str(timestamp),
    }
    if key:
        headers["webhook-signature"] = webhook_sign(
            key=key, msg_id=event.message_id, timestamp=timestamp, body=event.body
        )
    started, status_code, error = time.monotonic(), None, ""
    try:
        status_code = _post(url=event.url, headers=headers, body=event.body.encode())
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}" + (" (redirects are not followed)" if 300 <= status_code < 400 else "")
    except ApiError as exc:
        error = f"{exc.code}: {exc.message}"
    except (OSError, http.client.HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    duration_ms = int(1000 * (time.monotonic() - started))
    now = timezone.now()
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(pk=event.pk)
        if event.status != DeliveryStatus.PENDING:  # a duplicate message delivered it meanwhile
            return "skipped"
        event.attempts += 1
        WebhookAttempt.objects.create(
            event=event, number=event.attempts, status_code=status_code, error=error[:500], duration_ms=duration_ms
        )
        if not error:
            event.status, event.finished_at, event.next_attempt_at = DeliveryStatus.DELIVERED, now, None
        else:
            delay = retry_delay(event.attempts)
            if (now - event.created_at).total_seconds() >= settings.WEBHOOK_RETRY_FOR_S:
                event.status, event.finished_at, event.next_attempt_at = DeliveryStatus.FAILED, now, None
                log.warning("webhook %s of job %s failed for good: %s", event.message_id, event.job_id, error)
            else:
                event.next_attempt_at = now + timedelta(seconds=delay)
                _send(event.pk, countdown=delay)
        event.save()
    return event.status
