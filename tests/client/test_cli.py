"""The `wanq` command line as a user runs it: a subprocess against a real web server (gunicorn) and, to
render, a real Celery worker on the tiny checkpoint."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for
from tests.mp4 import read_mp4

SIZED_DOWN = {"width": 64, "height": 64, "num_frames": 5, "sample_steps": 2, "fps": 8}


@pytest.fixture
def token(django_user_model):
    from rest_framework.authtoken.models import Token

    user = django_user_model.objects.create_user(username="cli-user", password="pw-cli-123")
    return Token.objects.create(user=user).key


def cli_env(tmp_path, url=None, token=None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANQ_")}
    env.update(WANQ_CONFIG=str(tmp_path / "wanq-config.json"), WANQ_POLL_S="0.3", PYTHONPATH=str(ROOT / "client"))
    if url:
        env["WANQ_URL"] = url
    if token:
        env["WANQ_TOKEN"] = token
    return env


def wanq(*args, env, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "wanq", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def request_file(tmp_path, **changes) -> Path:
    body = json.loads((ROOT / "examples" / "minimal_request.json").read_text())
    body["prompts"] = [{**body["prompts"][0], **SIZED_DOWN}]
    body.update(changes)
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body))
    return path


def test_submit_wait_downloads_the_mp4(web_server, token, start_worker, tmp_path):
    start_worker("cli")
    out_dir = tmp_path / "videos"
    result = wanq(
        "submit",
        request_file(tmp_path),
        "--wait",
        "--out",
        out_dir,
        env=cli_env(tmp_path, web_server, token),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    paths = [Path(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(paths) == 1 and paths[0].parent == out_dir.resolve() and paths[0].suffix == ".mp4"
    frames, meta = read_mp4(paths[0])
    assert tuple(meta["size"]) == (64, 64)
    assert frames.shape == (5, 64, 64, 3)
    assert "succeeded" in result.stderr

    request_id = result.stderr.split("Submitted request ", 1)[1].split()[0]
    again = wanq("download", request_id, "--out", tmp_path / "again", env=cli_env(tmp_path, web_server, token))
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.strip()).read_bytes() == paths[0].read_bytes()
    status = wanq("status", request_id, "--json", env=cli_env(tmp_path, web_server, token))
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "succeeded"


def test_refused_request_prints_the_code(web_server, token, tmp_path):
    env = cli_env(tmp_path, web_server, token)
    result = wanq("submit", request_file(tmp_path, model="no_such_model"), "--wait", env=env)
    assert result.returncode == 2
    assert "error " in result.stderr and "model" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout == ""

    bad = tmp_path / "bad.json"
    bad.write_text('{"model": ')
    result = wanq("submit", bad, env=env)
    assert result.returncode == 2 and "BAD_REQUEST_FILE" in result.stderr and "Traceback" not in result.stderr

    result = wanq("submit", request_file(tmp_path), env=cli_env(tmp_path, web_server, "not-a-token"))
    assert result.returncode == 2 and "AUTHENTICATION_FAILED" in result.stderr


def test_status_of_an_unknown_id(web_server, token, tmp_path):
    result = wanq("status", "00000000-0000-0000-0000-000000000000", env=cli_env(tmp_path, web_server, token))
    assert result.returncode == 2
    assert "REQUEST_NOT_FOUND" in result.stderr and "Traceback" not in result.stderr


def test_loras_upload_twice(web_server, token, lora_files, tmp_path):
    env = cli_env(tmp_path, web_server, token)
    first = wanq("loras", "upload", lora_files["a"], env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith("created")
    second = wanq("loras", "upload", lora_files["a"], env=env)
    assert second.returncode == 0, second.stderr
    assert "already in the library" in second.stdout
    assert first.stdout.split(":")[0] == second.stdout.split(":")[0] == f"job_a (id {lora_id(first.stdout)})"
    listed = wanq("loras", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [lora["id"] for lora in json.loads(listed.stdout)] == [lora_id(first.stdout)]


def lora_id(line: str) -> int:
    return int(line.split("(id ", 1)[1].split(")")[0])


def test_login_stores_a_private_token(web_server, token, django_user_model, tmp_path):
    from django.contrib.auth.hashers import PBKDF2PasswordHasher

    user = django_user_model.objects.get(username="cli-user")  # hashed as the server checks (the tests use MD5)
    user.password = PBKDF2PasswordHasher().encode("pw-cli-123", PBKDF2PasswordHasher().salt())
    user.save(update_fields=["password"])
    env = cli_env(tmp_path)
    result = wanq(
        "--url", web_server, "login", "--username", "cli-user", env=env, input="pw-cli-123\n", start_new_session=True
    )
    assert result.returncode == 0, result.stderr
    path = tmp_path / "wanq-config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": web_server, "token": token}
    result = wanq("status", "00000000-0000-0000-0000-000000000000", env=env)  # URL and token from the file
    assert result.returncode == 2 and "REQUEST_NOT_FOUND" in result.stderr

    wrong = wanq("--url", web_server, "login", "-u", "cli-user", env=env, input="nope\n", start_new_session=True)
    assert wrong.returncode == 2 and "error " in wrong.stderr and "Traceback" not in wrong.stderr


def test_ctrl_c_leaves_the_job_running(web_server, token, tmp_path):
    """No worker: the job stays queued; Ctrl-C stops the client, not the job, and says how to follow it."""
    from webapp.jobs.models import GenerationJob

    proc = subprocess.Popen(
        [sys.executable, "-m", "wanq", "submit", str(request_file(tmp_path)), "--wait"],
        cwd=ROOT,
        env=cli_env(tmp_path, web_server, token),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    job = wait_for(lambda: GenerationJob.objects.first(), timeout=30)
    time.sleep(1.0)  # polling
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert f"wanq status {job.pk}" in stderr and "Traceback" not in stderr
    job.refresh_from_db()
    assert job.status == "queued"


def test_unreachable_server(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = wanq("status", "abc", env=cli_env(tmp_path, f"http://127.0.0.1:{port}", "t"))
    assert result.returncode == 3
    assert "CONNECTION_ERROR" in result.stderr and "Traceback" not in result.stderr
