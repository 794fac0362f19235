"""Downloading a LoRA named by an https URL: allowlisted hosts, public addresses, capped size and time.

Owns every network rule for LoRA URLs (which addresses may be reached is webapp.core.outbound's, shared
with webhooks); callers get an open temporary file and a filename, or an ApiError.
"""

from __future__ import annotations

import http.client
import ssl
import tempfile
import time
from typing import IO, Protocol
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from django.conf import settings

from webapp.core.errors import ApiError
from webapp.core.outbound import AddressNotPublic, VettedHTTPSConnection, public_address, watchdog

MAX_REDIRECTS = 3
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_CHUNK = 1 << 20
_SPOOL_BYTES = 16 << 20  # small files stay in memory; a multi-GB LoRA rolls over to disk


class _Response(Protocol):
    def read(self, amt: int = ..., /) -> bytes: ...
    def getheader(self, name: str, default: str | None = None) -> str | None: ...


def _fail(code: str, message: str, *, url: str, status_code: int | None = None, **details: object) -> ApiError:
    return ApiError(code, message, details={"url": url, **details}, status_code=status_code)


def _host_allowed(*, host: str, allowed: list[str]) -> bool:
    # Same convention as Django's ALLOWED_HOSTS: ".example.com" is example.com and any subdomain of it.
    host = host.lower()
    for entry in (e.strip().strip("[]").lower() for e in allowed):
        if entry.startswith(".") and len(entry) > 1:
            if host == entry[1:] or host.endswith(entry):
                return True
        elif entry and host == entry:
            return True
    return False


def _vet_url(*, url: str, allowed: list[str]) -> SplitResult:
    """The parsed URL if it is https, carries no credentials and names an allowlisted host."""
    try:
        if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
            raise ValueError("control character or whitespace")
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise _fail("LORA_URL_INVALID", "The LoRA URL is malformed.", url=url) from None
    if parts.scheme.lower() != "https":
        raise _fail("LORA_URL_NOT_HTTPS", "LoRA URLs must use https.", url=url)
    if "@" in parts.netloc:
        # Credentials in a URL end up in logs and job records; they have no place in a shared queue.
        raise _fail("LORA_URL_INVALID", "LoRA URLs may not carry a user name or password.", url=url)
    host = parts.hostname
    if not host or not host.isascii():
        raise _fail("LORA_URL_INVALID", "The LoRA URL has no usable host name.", url=url)
    if not _host_allowed(host=host, allowed=allowed):
        raise _fail("LORA_URL_HOST_NOT_ALLOWED", f"LoRAs may not be downloaded from {host!r}.", url=url, host=host)
    return parts


def _filename(*, parts: SplitResult, url: str) -> str:
    name = unquote(parts.path.rsplit("/", 1)[-1])
    if not name.endswith(".safetensors") or name == ".safetensors" or any(c in name for c in "/\\\x00"):
        raise _fail("LORA_URL_INVALID", "The LoRA URL's path must end in a .safetensors file name.", url=url)
    return name


def _resolve(*, host: str, port: int, url: str) -> str:
    """One vetted address for host; every address it resolves to must be public, not just the first."""
    try:
        return public_address(host=host, port=port)
    except (OSError, UnicodeError) as exc:
        raise _fail(
            "LORA_URL_FETCH_FAILED", f"Could not resolve {host!r}.", url=url, status_code=502, reason=str(exc)
        ) from None
    except AddressNotPublic:
        raise _fail(
            "LORA_URL_PRIVATE_ADDRESS", f"{host!r} resolves to an address that is not public.", url=url, host=host
        ) from None


def _vet_redirect(*, current_url: str, location: str) -> str:
    """The absolute URL a redirect names, if it stays https on the same host and port."""
    target = location
    try:
        target = urljoin(current_url, location.strip())
        new, old = urlsplit(target), urlsplit(current_url)
        same_origin = (
            new.scheme.lower() == "https"
            and "@" not in new.netloc
            and (new.hostname or "").lower() == (old.hostname or "").lower()
            and (new.port or 443) == (old.port or 443)
        )
    except ValueError:
        same_origin = False
    if not same_origin:
        # Following a redirect to another host would let an allowlisted host launder any URL.
        raise _fail(
            "LORA_URL_REDIRECT_REFUSED",
            "The LoRA URL redirects away from its https host; link the file directly.",
            url=current_url,
            location=target,
        )
    return target


def _read_capped(*, response: _Response, limit: int, deadline: float, url: str = "") -> tempfile.SpooledTemporaryFile:
    """The body in a temporary file at offset 0: at most `limit` bytes, finished before `deadline`."""
    declared = response.getheader("Content-Length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise _fail("LORA_URL_FETCH_FAILED", "The server sent an invalid Content-Length.", url=url, status_code=502)
        if int(declared) > limit:
            raise _fail(
                "LORA_URL_TOO_LARGE",
                f"The LoRA is {int(declared)} bytes; at most {limit} are allowed.",
                url=url,
                size=int(declared),
                limit=limit,
            )
    # read1 returns after one socket read, so the deadline is checked between the server's sends.
    read = getattr(response, "read1", response.read)
    out = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
    total = 0
    try:
        while chunk := read(_CHUNK):
            total += len(chunk)
            if total > limit:
                raise _fail(
                    "LORA_URL_TOO_LARGE", f"The LoRA is larger than the {limit} bytes allowed.", url=url, limit=limit
                )
            if time.monotonic() > deadline:
                raise _fail("LORA_URL_TIMEOUT", "Downloading the LoRA took too long.", url=url, status_code=504)
            out.write(chunk)
        if time.monotonic() > deadline:  # the watchdog cut the socket: what arrived is a truncated file
            raise _fail("LORA_URL_TIMEOUT", "Downloading the LoRA took too long.", url=url, status_code=504)
        if declared is not None and total != int(declared):
            raise _fail(
                "LORA_URL_FETCH_FAILED",
                f"The download ended after {total} of {declared} bytes.",
                url=url,
                status_code=502,
            )
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


def _get(*, url: str, parts: SplitResult, deadline: float) -> tuple[str | None, IO[bytes] | None]:
    """One GET: (redirect target, None) or (None, body file); refusals and failures raise."""
    host, port = parts.hostname, parts.port or 443
    address = _resolve(host=host, port=port, url=url)
    timeout = max(0.001, min(settings.LORA_URL_TIMEOUT_S, deadline - time.monotonic()))
    conn = VettedHTTPSConnection(
        host, address=address, port=port, timeout=timeout, context=ssl.create_default_context()
    )
    timer = watchdog(conn=conn, deadline=deadline)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", path, headers={"Accept-Encoding": "identity", "User-Agent": "wan-render-queue"})
        response = conn.getresponse()
        if response.status in _REDIRECT_STATUSES:
            location = response.getheader("Location")
            if not location:
                raise _fail(
                    "LORA_URL_FETCH_FAILED",
                    "The server redirected without a Location.",
                    url=url,
                    status_code=502,
                    status=response.status,
                )
            return _vet_redirect(current_url=url, location=location), None
        if not 200 <= response.status < 300:
            raise _fail(
                "LORA_URL_FETCH_FAILED",
                f"The server answered HTTP {response.status}.",
                url=url,
                status_code=502,
                status=response.status,
            )
        return None, _read_capped(response=response, limit=settings.LORA_URL_MAX_BYTES, deadline=deadline, url=url)
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
            raise _fail("LORA_URL_TIMEOUT", "Downloading the LoRA took too long.", url=url, status_code=504) from None
        raise _fail(
            "LORA_URL_FETCH_FAILED",
            f"Downloading the LoRA failed: {exc}",
            url=url,
            status_code=502,
            reason=type(exc).__name__,
        ) from None
    finally:
        timer.cancel()
        conn.close()


def lora_url_check(*, url: str) -> str:
    """Refuse a LoRA URL that can be refused without the network (off, not https, credentials,
    host not allowed, no .safetensors name); its file name otherwise. Submits call this; the
    download (on the CPU queue) checks every address again."""
    allowed = list(settings.LORA_URL_ALLOWED_HOSTS or [])
    if not allowed:
        raise _fail("LORA_URL_DISABLED", "LoRA URLs are not enabled on this server; upload the file instead.", url=url)
    return _filename(parts=_vet_url(url=url, allowed=allowed), url=url)


def lora_download(*, url: str) -> tuple[tempfile.SpooledTemporaryFile | IO[bytes], str]:
    """Download the LoRA at url: (binary file at offset 0, file name from the URL's path)."""
    filename = lora_url_check(url=url)
    allowed = list(settings.LORA_URL_ALLOWED_HOSTS or [])
    parts = _vet_url(url=url, allowed=allowed)
    deadline = time.monotonic() + 4 * settings.LORA_URL_TIMEOUT_S
    current = url
    for hop in range(MAX_REDIRECTS + 1):
        target, body = _get(url=current, parts=parts, deadline=deadline)
        if body is not None:
            return body, filename
        if hop == MAX_REDIRECTS:
            break
        current = target
        parts = _vet_url(url=current, allowed=allowed)  # a redirect is vetted like the first URL, DNS included
    raise _fail("LORA_URL_REDIRECT_REFUSED", f"The LoRA URL redirects more than {MAX_REDIRECTS} times.", url=url)
