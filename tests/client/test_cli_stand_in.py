"""The `wanq` command line against a stand-in server (http.server in a thread, answering as the API does):
moments a real queue passes through too quickly to catch (a canceled sweep before its grids are composed),
jobs that failed after making some videos, and what the client does before it sends anything."""

from __future__ import annotations

import json
import os
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from wanq import config
from wanq.api import UPLOAD_TIMEOUT, Client

from tests.client.test_cli import cli_env, wanq

SWEEP = "5a1e0000-0000-0000-0000-000000000001"
REQUEST = "0b0e0000-0000-0000-0000-000000000002"
VIDEO = b"\x00\x00\x00\x18ftypmp42 not really a video"


class StandIn(ThreadingHTTPServer):
    """Answers each path with its list of answers in `routes`, one per call, repeating the last: a dict is
    sent as JSON, bytes as a file."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Answer)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.routes: dict[str, list] = {}
        self.calls: list[str] = []


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.calls.append(self.path)
        answers = self.server.routes.get(self.path)
        if not answers:
            self._send(404, json.dumps({"error": {"code": "NOT_FOUND", "message": self.path}}).encode())
            return
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        self._send(200, answer if isinstance(answer, bytes) else json.dumps(answer).encode())

    do_POST = do_GET

    def _send(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stand_in():
    server = StandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def env_for(tmp_path, server: StandIn) -> dict:
    return {**cli_env(tmp_path, server.url, "t"), "WANQ_POLL_S": "0.05"}


# --- a canceled sweep's grids -----------------------------------------------------------------------------


def sweep(status: str, *, url: str, cells=("succeeded", "canceled"), grids: bool = False) -> dict:
    counts = {state: list(cells).count(state) for state in ("queued", "running", "succeeded", "failed", "canceled")}
    return {
        "id": SWEEP,
        "name": "strength",
        "status": status,
        "axes": [{"field": "lora", "labels": ["a"]}, {"field": "multiplier", "labels": [0, 1]}],
        "counts": counts,
        "cells": [{"row": 0, "column": column, "layer": 0, "status": s} for column, s in enumerate(cells)],
        "grids": [{"prompt_index": 0, "layer": 0, "video_url": f"{url}/grid.mp4", "image_url": f"{url}/grid.png"}]
        if grids
        else [],
        "error": None,
        "url": f"{url}/sweeps/{SWEEP}/",
    }


def cancel_then_compose(server: StandIn) -> list[dict]:
    """What GET /api/v1/sweeps/ID/ answers after `sweep cancel`: canceled at once, then composing the grids
    of the cell that rendered, then canceled with them."""
    return [
        sweep("canceled", url=server.url),
        sweep("composing", url=server.url),
        sweep("canceled", url=server.url, grids=True),
    ]


def test_waiting_on_a_canceled_sweep_lasts_until_its_grids_are_composed(stand_in, tmp_path):
    stand_in.routes = {
        "/api/v1/sweeps/": [{"id": SWEEP, "cells": [{}, {}], "url": ""}],
        f"/api/v1/sweeps/{SWEEP}/": cancel_then_compose(stand_in),
        "/grid.mp4": [VIDEO],
        "/grid.png": [b"\x89PNG sheet"],
    }
    request = tmp_path / "sweep.json"
    request.write_text("{}")
    result = wanq("sweep", "submit", request, "--wait", "--out", tmp_path / "grids", env=env_for(tmp_path, stand_in))
    assert result.returncode == 1, result.stderr
    assert "error CANCELED" in result.stderr and "composing" in result.stderr
    paths = [Path(line) for line in result.stdout.split()]
    assert [path.name for path in paths] == ["5a1e0000_grid_000_00.mp4", "5a1e0000_grid_000_00.png"]
    assert paths[0].read_bytes() == VIDEO

    stand_in.routes[f"/api/v1/sweeps/{SWEEP}/"] = cancel_then_compose(stand_in)
    status = wanq("sweep", "status", SWEEP, "--wait", env=env_for(tmp_path, stand_in))
    assert status.returncode == 1 and "error CANCELED" in status.stderr
    assert "/grid.mp4" in status.stdout


def test_downloading_a_canceled_sweep_before_its_grids(stand_in, tmp_path):
    stand_in.routes = {f"/api/v1/sweeps/{SWEEP}/": [sweep("canceled", url=stand_in.url)]}
    result = wanq("sweep", "download", SWEEP, "--out", tmp_path, env=env_for(tmp_path, stand_in))
    assert result.returncode == 1
    assert "error NOT_FINISHED" in result.stderr and f"wanq sweep status {SWEEP} --wait" in result.stderr

    # No cell rendered: there is nothing to compose, so it has ended as it is.
    nothing = sweep("canceled", url=stand_in.url, cells=("failed", "canceled"))
    stand_in.routes = {f"/api/v1/sweeps/{SWEEP}/": [nothing]}
    result = wanq("sweep", "download", SWEEP, "--out", tmp_path, env=env_for(tmp_path, stand_in))
    assert result.returncode == 1 and "error CANCELED" in result.stderr
    status = wanq("sweep", "status", SWEEP, "--wait", env=env_for(tmp_path, stand_in))
    assert status.returncode == 1 and "error CANCELED" in status.stderr
    assert stand_in.calls.count(f"/api/v1/sweeps/{SWEEP}/") == 3  # one look each, no polling


# --- downloading a job's videos ---------------------------------------------------------------------------


def result(status: str, *, url: str, videos: int, error_code=None, error=None) -> dict:
    return {
        "request_id": REQUEST,
        "status": status,
        "outputs": {"images": [], "videos": [{"url": f"{url}/video.mp4", "seed": 7}] * videos},
        "error_code": error_code,
        "error": error,
    }


def test_download_of_a_failed_job_saves_its_videos_then_fails(stand_in, tmp_path):
    failed = result("failed", url=stand_in.url, videos=1, error_code="OOM", error="CUDA out of memory.")
    stand_in.routes = {f"/v1/requests/{REQUEST}/result": [failed], "/video.mp4": [VIDEO]}
    env = env_for(tmp_path, stand_in)
    downloaded = wanq("download", REQUEST, "--out", tmp_path / "videos", env=env, preexec_fn=lambda: os.umask(0o027))
    assert downloaded.returncode == 1
    assert "error OOM: CUDA out of memory." in downloaded.stderr
    (path,) = map(Path, downloaded.stdout.split())
    assert path.read_bytes() == VIDEO
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # as any new file under that umask, not mkstemp's 0600

    stand_in.routes[f"/v1/requests/{REQUEST}/result"] = [result("canceled", url=stand_in.url, videos=0)]
    canceled = wanq("download", REQUEST, "--out", tmp_path / "videos", env=env)
    assert canceled.returncode == 1 and canceled.stdout == ""
    assert f"Request {REQUEST} canceled before it made a video: nothing to download." in canceled.stderr
    assert "error CANCELED" in canceled.stderr

    stand_in.routes[f"/v1/requests/{REQUEST}/result"] = [result("in_progress", url=stand_in.url, videos=1)]
    partial = wanq("download", REQUEST, "--out", tmp_path / "partial", env=env)
    assert partial.returncode == 0, partial.stderr
    assert Path(partial.stdout.strip()).read_bytes() == VIDEO

    stand_in.routes[f"/v1/requests/{REQUEST}/result"] = [result("in_queue", url=stand_in.url, videos=0)]
    queued = wanq("download", REQUEST, env=env)
    assert queued.returncode == 1 and "error NOT_FINISHED" in queued.stderr


# --- before anything is sent ------------------------------------------------------------------------------


def test_a_url_without_its_scheme_is_refused(tmp_path):
    env = cli_env(tmp_path)
    for args in (("status", REQUEST), ("status", REQUEST, "--wait")):
        result = wanq("--url", "localhost:8000", *args, env={**env, "WANQ_TOKEN": "t"}, timeout=10)
        assert result.returncode == 2
        assert "error BAD_URL" in result.stderr and "http://localhost:8000" in result.stderr
    login = wanq("--url", "localhost:8000", "login", "-u", "someone", env=env, input="pw\n", timeout=10)
    assert login.returncode == 2 and "error BAD_URL" in login.stderr and "Password" not in login.stderr


def test_a_lora_upload_waits_as_long_as_a_run_upload(tmp_path):
    """The server hashes and inspects a checkpoint before it answers: longer than a status may take."""
    timeouts = []

    def answer(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(201, json={"id": 1, "name": "a", "created": True})

    lora = tmp_path / "a.safetensors"
    lora.write_bytes(b"weights")
    client = Client("http://queue.test", "t")
    client.http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(answer))
    client.lora_upload(lora)
    client.run_upload(lora)
    assert timeouts == [UPLOAD_TIMEOUT.as_dict()] * 2


def test_the_stored_token_is_never_readable_by_others(tmp_path, monkeypatch):
    """A config.json.tmp left behind with other bits is made private before the token goes into it."""
    monkeypatch.setenv("WANQ_CONFIG", str(tmp_path / "config.json"))
    leftover = tmp_path / "config.json.tmp"
    leftover.write_text("{}")
    leftover.chmod(0o644)
    modes = []
    dump = json.dump

    def dump_seen(data, fh, **kwargs):
        modes.append(stat.S_IMODE(os.fstat(fh.fileno()).st_mode))
        dump(data, fh, **kwargs)

    monkeypatch.setattr(config.json, "dump", dump_seen)
    path = config.save("http://queue.test", "secret")
    assert modes == [0o600]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and json.loads(path.read_text())["token"] == "secret"
