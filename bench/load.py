"""Concurrent clients against a running server: submit jobs, poll their status, time both.

Used by tests/workers/test_load.py (which starts gunicorn and a worker on loopback) and
printable on its own. Loopback only, bounded in requests and time.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

TINY_PROMPT = {"prompt": "load test", "width": 64, "height": 64, "num_frames": 1, "sample_steps": 1}


@dataclass
class LoadResult:
    submitted: list[str] = field(default_factory=list)
    submit_s: list[float] = field(default_factory=list)
    status_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        def pct(values, q):
            return round(statistics.quantiles(values, n=100)[q - 1] * 1000, 1) if len(values) > 1 else None

        return {
            "jobs": len(self.submitted),
            "unique_ids": len(set(self.submitted)),
            "errors": len(self.errors),
            "submit_p50_ms": pct(self.submit_s, 50),
            "submit_p99_ms": pct(self.submit_s, 99),
            "status_requests": len(self.status_s),
            "status_p50_ms": pct(self.status_s, 50),
            "status_p99_ms": pct(self.status_s, 99),
        }


def _call(url: str, token: str, body: dict | None = None) -> tuple[float, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"Authorization": f"Token {token}", "Content-Type": "application/json"}
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    return time.perf_counter() - start, payload


def run_load(base_url: str, tokens: list[str], *, jobs_per_client: int, status_polls: int) -> LoadResult:
    """Each token is one client thread: it submits its jobs, polling the status of its last one in between."""
    result, lock = LoadResult(), threading.Lock()
    body = {"model": "wan21_14b", "loras": [], "prompts": [TINY_PROMPT]}

    def client(token):
        last = None
        for _ in range(jobs_per_client):
            try:
                took, reply = _call(f"{base_url}/v1/inference", token, body)
                with lock:
                    result.submit_s.append(took)
                    result.submitted.append(reply["request_id"])
                last = reply["request_id"]
                for _ in range(status_polls):
                    took, _ = _call(f"{base_url}/v1/requests/{last}/status", token)
                    with lock:
                        result.status_s.append(took)
            except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
                with lock:
                    result.errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return result
