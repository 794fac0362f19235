"""HTTP calls to the render queue. Every failure becomes `WanqError` with the API's `code` and `message`
(the service answers errors as {"error": {"code", "message", "details"}}), or a code of our own for
the network and for answers that are not the API's (CONNECTION_ERROR, TIMEOUT, BAD_RESPONSE, HTTP_<status>)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from wanq import __version__

# Exit codes of the command line (see `wanq --help`).
EXIT_JOB_FAILED = 1  # the job failed or was canceled
EXIT_REFUSED = 2  # the API (or the client, before sending) refused the request: 4xx, bad JSON file, no URL
EXIT_UNREACHABLE = 3  # no answer, or not the API's: connection errors, timeouts, 5xx, non-JSON bodies


class WanqError(Exception):
    def __init__(self, code: str, message: str, *, details: Any = None, status: int | None = None, exit_code=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}
        self.status = status
        if exit_code is None:
            exit_code = EXIT_REFUSED if status is not None and 400 <= status < 500 else EXIT_UNREACHABLE
        self.exit_code = exit_code


def _error_from(response: httpx.Response) -> WanqError:
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "code" in error:
        return WanqError(
            str(error["code"]),
            str(error.get("message", "")),
            details=error.get("details"),
            status=response.status_code,
        )
    text = response.text.strip().splitlines()[0][:200] if response.text.strip() else response.reason_phrase
    return WanqError(f"HTTP_{response.status_code}", text, status=response.status_code)


class Client:
    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0):
        self.url = url.rstrip("/")
        headers = {"User-Agent": f"wanq/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Token {token}"
        # httpx drops Authorization on redirects to another host (S3 presigned output URLs).
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, follow_redirects=True)

    def close(self):
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise WanqError("TIMEOUT", f"{self.url} did not answer in time ({type(exc).__name__}).") from None
        except httpx.TransportError as exc:
            raise WanqError("CONNECTION_ERROR", f"Cannot reach {self.url}: {exc or type(exc).__name__}.") from None
        except httpx.InvalidURL as exc:
            raise WanqError("BAD_URL", f"{self.url}: {exc}", exit_code=EXIT_REFUSED) from None
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self._send(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise WanqError(
                "BAD_RESPONSE",
                f"{method} {path} answered {response.status_code} without JSON: is {self.url} the queue?",
            ) from None
        if not isinstance(body, dict):
            raise WanqError("BAD_RESPONSE", f"{method} {path} answered {type(body).__name__}, not an object.")
        return body

    # --- the endpoints ---------------------------------------------------------------------------------

    def token(self, username: str, password: str) -> str:
        body = self.call("POST", "/api/v1/auth/token", data={"username": username, "password": password})
        if "token" not in body:
            raise WanqError("BAD_RESPONSE", "The sign-in answer has no token.")
        return body["token"]

    def submit(self, request: dict) -> dict:
        return self.call("POST", "/v1/inference", json=request)

    def status(self, request_id: str) -> dict:
        return self.call("GET", f"/v1/requests/{_segment(request_id)}/status")

    def result(self, request_id: str) -> dict:
        return self.call("GET", f"/v1/requests/{_segment(request_id)}/result")

    def cancel(self, request_id: str) -> dict:
        return self.call("POST", f"/v1/requests/{_segment(request_id)}/cancel")

    def retry(self, job_id: str) -> dict:
        return self.call("POST", f"/api/v1/jobs/{_segment(job_id)}/retry/")

    def lora_upload(self, path: Path) -> dict:
        with path.open("rb") as fh:
            return self.call("POST", "/api/v1/loras/", files={"file": (path.name, fh, "application/octet-stream")})

    def loras(self) -> Iterator[dict]:
        page: str | None = "/api/v1/loras/?limit=200"
        while page:
            body = self.call("GET", page)
            yield from body.get("results", [])
            page = body.get("next")

    def download(self, url: str, dest: Path, on_bytes: Callable[[int, int | None], None] | None = None) -> Path:
        """Stream `url` into `dest` (written to a temporary file beside it, then renamed)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    with self.http.stream("GET", url) as response:
                        if response.status_code >= 400:
                            response.read()
                            raise _error_from(response)
                        total = (
                            int(response.headers["Content-Length"]) if "Content-Length" in response.headers else None
                        )
                        for chunk in response.iter_bytes(1 << 16):
                            out.write(chunk)
                            if on_bytes:
                                on_bytes(len(chunk), total)
                except httpx.TimeoutException:
                    raise WanqError("TIMEOUT", f"Downloading {url} timed out.") from None
                except httpx.TransportError as exc:
                    raise WanqError("CONNECTION_ERROR", f"Downloading {url} failed: {exc}.") from None
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest


def _segment(value: str) -> str:
    """An id as one path segment (ids are UUIDs; anything else is the server's to refuse, not to route)."""
    return quote(value, safe="")
