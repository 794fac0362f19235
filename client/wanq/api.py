"""HTTP calls to the render queue. Every failure becomes `WanqError` with the API's `code` and `message`
(the service answers errors as {"error": {"code", "message", "details"}}), or a code of our own for
the network and for answers that are not the API's (CONNECTION_ERROR, TIMEOUT, BAD_RESPONSE, HTTP_<status>)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlsplit

import httpx

from wanq import __version__

# Exit codes of the command line (see `wanq --help`).
EXIT_JOB_FAILED = 1  # the job failed or was canceled
EXIT_REFUSED = 2  # the API (or the client, before sending) refused the request: 4xx, bad JSON file, no URL
EXIT_UNREACHABLE = 3  # no answer, or not the API's: connection errors, timeouts, 5xx, non-JSON bodies

# The server hashes, inspects and stores an uploaded checkpoint before it answers: wait longer than for a status.
UPLOAD_TIMEOUT = httpx.Timeout(30.0, read=600.0)

OnBytes = Callable[[int, int | None], None]  # (bytes sent or received so far, the total if known)


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
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise WanqError(
                "BAD_URL", f"{url}: start the URL with http:// or https://, e.g. http://{url}", exit_code=EXIT_REFUSED
            )
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
            return self.call(
                "POST",
                "/api/v1/loras/",
                files={"file": (path.name, fh, "application/octet-stream")},
                timeout=UPLOAD_TIMEOUT,
            )

    def run_upload(
        self, checkpoint: Path, *, config: Path | None = None, run: str | None = None, on_bytes: OnBytes | None = None
    ) -> dict:
        """One checkpoint of a training run (with its config.yaml, if given) to POST /api/v1/loras/runs/;
        `on_bytes` follows the checkpoint's upload."""
        with ExitStack() as stack:
            fh = stack.enter_context(checkpoint.open("rb"))
            body = _Metered(fh, on_bytes) if on_bytes else fh
            files = [("files", (checkpoint.name, body, "application/octet-stream"))]
            if config is not None:
                files.append(("config", (config.name, stack.enter_context(config.open("rb")), "application/yaml")))
            data = {"run": run} if run else {}
            return self.call("POST", "/api/v1/loras/runs/", files=files, data=data, timeout=UPLOAD_TIMEOUT)

    def prompt_set(self, prompt_set_id: int) -> dict:
        return self.call("GET", f"/api/v1/prompt-sets/{_segment(str(prompt_set_id))}/")

    def sweep_submit(self, request: dict) -> dict:
        return self.call("POST", "/api/v1/sweeps/", json=request)

    def sweep(self, sweep_id: str) -> dict:
        return self.call("GET", f"/api/v1/sweeps/{_segment(sweep_id)}/")

    def sweep_cancel(self, sweep_id: str) -> dict:
        return self.call("POST", f"/api/v1/sweeps/{_segment(sweep_id)}/cancel/")

    def loras(self) -> Iterator[dict]:
        page: str | None = "/api/v1/loras/?limit=200"
        while page:
            body = self.call("GET", page)
            yield from body.get("results", [])
            page = body.get("next")

    def download(self, url: str, dest: Path, on_bytes: OnBytes | None = None) -> Path:
        """Stream `url` into `dest` (written to a temporary file beside it, then renamed), with the mode a
        new file gets here."""
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
                                on_bytes(response.num_bytes_downloaded, total)
                except httpx.TimeoutException:
                    raise WanqError("TIMEOUT", f"Downloading {url} timed out.") from None
                except httpx.TransportError as exc:
                    raise WanqError("CONNECTION_ERROR", f"Downloading {url} failed: {exc}.") from None
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it 0600
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return dest


class _Metered:
    """A file being uploaded that reports how far it has been read (httpx streams it in chunks, after
    measuring it through `fileno`)."""

    def __init__(self, fh: BinaryIO, on_bytes: OnBytes):
        self._fh = fh
        self._on_bytes = on_bytes
        self._total = os.fstat(fh.fileno()).st_size

    def read(self, size: int = -1) -> bytes:
        chunk = self._fh.read(size)
        self._on_bytes(self._fh.tell(), self._total)
        return chunk

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()

    def fileno(self) -> int:
        return self._fh.fileno()


def _umask() -> int:
    """The process's umask. Reading it means setting one: the stricter 077 meanwhile, so a file another
    thread creates in that instant is never more open than it would have been."""
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


def _segment(value: str) -> str:
    """An id as one path segment (ids are UUIDs; anything else is the server's to refuse, not to route)."""
    return quote(value, safe="")
