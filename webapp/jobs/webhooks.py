"""Job webhooks (Standard Webhooks): URL rules, per-user secrets, signing, the outbox and delivery.

- A webhook URL is https and resolves only to public addresses (the rules of LoRA URLs, `webapp/core/outbound.py`),
  unless its host is named exactly in WEBHOOK_ALLOWED_HOSTS, which exempts it from both; checked at submit
  (`webhook_url_check`) and again, DNS included, at every delivery. Redirects are never followed.
- An event is a `WebhookEvent` row written by `webhook_emit` in the transaction of the job change that causes
  it (an outbox); its body is frozen then. After commit the CPU queue's `workers.deliver_webhook` posts it
  (`webhook_deliver`), at least once: a failure or timeout is retried WEBHOOK_RETRY_BASE_S, doubling, at most
  WEBHOOK_RETRY_MAX_S apart, until WEBHOOK_RETRY_FOR_S after the event; then it is marked failed. Each message
  names the attempt it makes, so a late or duplicate one starts no second retry chain. A POST gets
  2 x WEBHOOK_TIMEOUT_S in all. The event row keeps its owner: a deleted job's events are still delivered,
  and an event whose owner was deleted fails (it is never sent unsigned).
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
from webapp.core.outbound import AddressNotPublic, VettedHTTPSConnection, public_address, watchdog
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
    if not url.isascii():
        raise _refuse("WEBHOOK_URL_INVALID", "The webhook URL must be ASCII; percent-encode other characters.", url=url)
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
    """The job as /v1/requests/<id>/status and /result show it, plus "event" and "timestamp" (when it
    happened: a retried event keeps it, so a receiver can order the events it gets late)."""
    from .compat import result_body, status_body  # compat imports services, which imports this module

    data = {**status_body(job), **result_body(job, _Base()), "event": event, "timestamp": timezone.now().isoformat()}
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
    row = WebhookEvent.objects.create(
        job=job, owner=job.owner, event=event, url=job.webhook, body=webhook_body(job, event)
    )
    _send(row.pk, attempt=1, countdown=0)
    return row


def _send(event_id, *, attempt: int, countdown: float) -> None:
    def send():
        args = [str(event_id), attempt]
        celery_app.send_task(DELIVER_TASK, args=args, queue=CPU_QUEUE, countdown=countdown or None)

    transaction.on_commit(send, robust=True)  # a broker outage: webhook_resend_due sends it again


def webhook_resend_due(*, grace_s: float = 300) -> int:
    """Re-send pending events whose message seems lost (due for longer than grace_s), or mark them failed once
    WEBHOOK_RETRY_FOR_S old; the reconciler calls this."""
    now = timezone.now()
    before = now - timedelta(seconds=grace_s)
    due = WebhookEvent.objects.filter(status=DeliveryStatus.PENDING, created_at__lt=before).exclude(
        next_attempt_at__gt=before
    )
    expired = due.filter(created_at__lt=now - timedelta(seconds=settings.WEBHOOK_RETRY_FOR_S))
    if given_up := expired.update(status=DeliveryStatus.FAILED, finished_at=now, next_attempt_at=None):
        log.warning("gave up %d webhook events past WEBHOOK_RETRY_FOR_S", given_up)
    count = 0
    for event_id, attempts in due.values_list("pk", "attempts")[:1000]:
        with transaction.atomic():
            _send(event_id, attempt=attempts + 1, countdown=0)
        count += 1
    return count


# --- delivery ----------------------------------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Seconds before the next attempt after `attempts` failed ones: base, doubling, capped."""
    return min(settings.WEBHOOK_RETRY_BASE_S * 2 ** max(0, attempts - 1), settings.WEBHOOK_RETRY_MAX_S)


def _post(*, url: str, headers: dict, body: bytes) -> int:
    """POST once, following no redirect, within 2 x WEBHOOK_TIMEOUT_S: the status code; refusals raise ApiError,
    network failures OSError."""
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
    deadline = time.monotonic() + 2 * timeout
    timer = watchdog(conn=conn, deadline=deadline)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(64 * 1024)
    except (OSError, http.client.HTTPException):
        if time.monotonic() < deadline:
            raise
    finally:
        timer.cancel()
        conn.close()
    if time.monotonic() >= deadline:  # the watchdog shut the socket: what came (if anything) was cut short
        raise TimeoutError(f"timed out: no complete answer within {2 * timeout:g} s")
    return response.status


def _attempt(event: WebhookEvent) -> tuple[int | None, str]:
    """POST the event signed: (status code, "") on a 2xx, else (status code or None, the error)."""
    if event.owner is None:
        return None, "WEBHOOK_OWNER_DELETED: the job's owner was deleted, so the event cannot be signed."
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "wan-render-queue-webhooks",
        "webhook-id": event.message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_sign(
            key=webhook_secret_get(user=event.owner), msg_id=event.message_id, timestamp=timestamp, body=event.body
        ),
    }
    try:
        status_code = _post(url=event.url, headers=headers, body=event.body.encode())
    except ApiError as exc:
        return None, f"{exc.code}: {exc.message}"
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # still an attempt: an event that never records one would be re-sent forever
        log.exception("webhook %s: unexpected error", event.message_id)
        return None, f"{type(exc).__name__}: {exc}"
    if 300 <= status_code < 400:
        return status_code, f"HTTP {status_code} (redirects are not followed)"
    return status_code, "" if 200 <= status_code < 300 else f"HTTP {status_code}"


def webhook_deliver(*, event_id, attempt: int | None) -> str:
    """Attempt number `attempt` at an event: POST it signed, record the attempt, then done, retried later, or
    failed. A message for another attempt (late, or sent twice) is skipped; None stands for the next one."""
    event = WebhookEvent.objects.select_related("owner").filter(pk=event_id).first()
    if event is None or event.status != DeliveryStatus.PENDING or attempt not in (None, event.attempts + 1):
        return "skipped"
    attempt = event.attempts + 1
    started = time.monotonic()
    status_code, error = _attempt(event)
    duration_ms = int(1000 * (time.monotonic() - started))
    now = timezone.now()
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(pk=event.pk)
        if event.status != DeliveryStatus.PENDING or event.attempts + 1 != attempt:  # a duplicate message won
            return "skipped"
        event.attempts += 1
        WebhookAttempt.objects.create(
            event=event, number=event.attempts, status_code=status_code, error=error[:500], duration_ms=duration_ms
        )
        if not error:
            event.status, event.finished_at, event.next_attempt_at = DeliveryStatus.DELIVERED, now, None
        else:
            delay = retry_delay(event.attempts)
            if event.owner_id is None or (now - event.created_at).total_seconds() >= settings.WEBHOOK_RETRY_FOR_S:
                event.status, event.finished_at, event.next_attempt_at = DeliveryStatus.FAILED, now, None
                log.warning("webhook %s (%s) failed for good: %s", event.message_id, event.event, error)
            else:
                event.next_attempt_at = now + timedelta(seconds=delay)
                _send(event.pk, attempt=event.attempts + 1, countdown=delay)
        event.save()
    return event.status
