"""The `wanq` command line as a user runs it: a subprocess against a real web server (gunicorn) and, to
render, a real Celery worker on the tiny checkpoint (and a CPU worker to compose a sweep's grids)."""

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
from PIL import Image

from tests.conftest import ROOT, SMALL, wait_for
from tests.mp4 import read_mp4
from tests.runs import write_checkpoint, write_run

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


def interrupted(*args, env, submitted) -> tuple:
    """Run `wanq ARGS` until the `submitted` model's first row exists and the client has polled a while, then
    press Ctrl-C: (that row, the exit status, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wanq", *map(str, args)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    row = wait_for(lambda: submitted.objects.first(), timeout=30)
    time.sleep(1.0)  # polling
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    return row, proc.returncode, stderr


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

    env = cli_env(tmp_path, web_server, token)
    job, returncode, stderr = interrupted("submit", request_file(tmp_path), "--wait", env=env, submitted=GenerationJob)
    assert returncode == 130, stderr
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


# --- training runs and sweeps ----------------------------------------------------------------------------


def results(stdout: str) -> dict[str, str]:
    """The import table's rows: file -> its step, id and result."""
    return {line.split()[0]: " ".join(line.split()[1:]) for line in stdout.splitlines() if ".safetensors" in line}


def test_import_run_adds_the_checkpoints_then_finds_them_unchanged(web_server, token, tmp_path):
    from webapp.loras.models import Lora
    from webapp.prompts.models import PromptSet

    env = cli_env(tmp_path, web_server, token)
    run = write_run(tmp_path / "cli_run", trigger_word="clx", seeds={250: 11, 500: 12})
    first = wanq("import-run", run, env=env)
    assert first.returncode == 0, first.stderr
    rows = results(first.stdout)
    assert list(rows) == ["cli_run_000000250.safetensors", "cli_run_000000500.safetensors"]
    assert [(row.split()[0], row.split()[-1]) for row in rows.values()] == [("250", "added"), ("500", "added")]
    loras = Lora.objects.filter(training_run="cli_run").order_by("training_step")
    assert [(lora.training_step, lora.trigger_word, lora.default_multiplier) for lora in loras] == [
        (250, "clx", 0.8),
        (500, "clx", 0.8),
    ]
    prompt_set = PromptSet.objects.get(name="cli_run")
    assert prompt_set.items.count() == 2
    assert "cli_run" in first.stdout and "clx" in first.stdout
    assert f"cli_run (id {prompt_set.pk}, 2 prompts)" in first.stdout
    assert "walking on a beach" in first.stdout

    again = wanq("import-run", run, env=env)
    assert again.returncode == 0, again.stderr
    assert [row.split()[-1] for row in results(again.stdout).values()] == ["unchanged", "unchanged"]
    assert Lora.objects.filter(training_run="cli_run").count() == 2

    # Retrained: the last checkpoint's bytes changed, and a broken one was saved: the first is a new
    # version, the broken one refused (exit 2) without stopping the rest.
    write_checkpoint(run, 500, seed=13)
    (run / "cli_run_000000750.safetensors").write_bytes(b"not a safetensors file")
    changed = wanq("import-run", run, "--no-config", env=env)
    assert changed.returncode == 2, changed.stderr
    rows = results(changed.stdout)
    assert rows["cli_run_000000250.safetensors"].endswith("unchanged")
    assert rows["cli_run_000000500.safetensors"].endswith("updated (version 2)")
    assert "refused LORA_" in rows["cli_run_000000750.safetensors"]
    current = Lora.objects.get(training_run="cli_run", training_step=500, superseded=False)
    assert (current.version, current.trigger_word) == (2, "clx")


def sweep_file(tmp_path, **changes) -> Path:
    body = {
        "name": "strength",
        "prompts": [{"prompt": "sks walking", **SMALL}],
        "axes": [
            {"field": "lora", "values": ["job_a/job_a.safetensors"]},
            {"field": "multiplier", "values": [0, 1]},
        ],
        **changes,
    }
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(body))
    return path


def test_sweep_submit_wait_downloads_the_grid(web_server, token, start_worker, tmp_path):
    start_worker("cli-gpu")
    start_worker("cli-cpu", queues="celery")  # settles the sweep and composes its grid
    env = cli_env(tmp_path, web_server, token)
    out_dir = tmp_path / "grids"
    result = wanq("sweep", "submit", sweep_file(tmp_path), "--wait", "--out", out_dir, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "succeeded" in result.stderr
    paths = sorted(Path(line) for line in result.stdout.splitlines() if line.strip())
    assert [path.suffix for path in paths] == [".mp4", ".png"] and all(p.parent == out_dir.resolve() for p in paths)
    frames, _ = read_mp4(paths[0])
    assert frames.shape[0] == SMALL["num_frames"]
    assert frames.shape[2] >= 2 * SMALL["width"]  # the two cells side by side, and their labels
    with Image.open(paths[1]) as sheet:
        assert sheet.size == (frames.shape[2], frames.shape[1])

    sweep_id = result.stderr.split("Submitted sweep ", 1)[1].split()[0]
    status = wanq("sweep", "status", sweep_id, env=env)
    assert status.returncode == 0, status.stderr
    assert "lora \\ multiplier" in status.stdout
    (row,) = [line for line in status.stdout.splitlines() if line.split()[:1] == ["job_a/job_a"]]
    assert row.split()[1:] == ["succeeded", "succeeded"]
    assert "2 succeeded" in status.stdout and f"/api/v1/sweeps/{sweep_id}/grids/" in status.stdout
    again = wanq("sweep", "download", sweep_id, "--out", tmp_path / "again", env=env)
    assert again.returncode == 0, again.stderr
    assert [Path(line).read_bytes() for line in again.stdout.split()] == [path.read_bytes() for path in paths]


def test_refused_sweep_prints_the_code(web_server, token, tmp_path):
    env = cli_env(tmp_path, web_server, token)
    four = [{"field": field, "values": [1]} for field in ("lora", "multiplier", "seed", "prompt")]
    result = wanq("sweep", "submit", sweep_file(tmp_path, axes=four), "--wait", env=env)
    assert result.returncode == 2
    assert "error SWEEP_BAD_AXES" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""

    result = wanq("sweep", "status", "00000000-0000-0000-0000-000000000000", env=env)
    assert result.returncode == 2 and "SWEEP_NOT_FOUND" in result.stderr


def test_ctrl_c_leaves_the_sweep_running_until_canceled(web_server, token, tmp_path):
    """No worker: the cells stay queued; Ctrl-C stops the client, not the sweep, and says how to follow it;
    `wanq sweep cancel` then cancels every cell."""
    from webapp.sweeps.models import Sweep

    env = cli_env(tmp_path, web_server, token)
    sweep, returncode, stderr = interrupted("sweep", "submit", sweep_file(tmp_path), "--wait", env=env, submitted=Sweep)
    assert returncode == 130, stderr
    assert f"wanq sweep status {sweep.pk} --wait" in stderr and "Traceback" not in stderr
    assert sweep.jobs.filter(status="queued").count() == 2

    canceled = wanq("sweep", "cancel", sweep.pk, env=env)
    assert canceled.returncode == 0, canceled.stderr
    assert canceled.stdout.strip().endswith("(2 cells canceled)")
    assert sweep.jobs.filter(status="canceled").count() == 2
    status = wanq("sweep", "status", sweep.pk, env=env)
    assert "2 canceled" in status.stdout
    (row,) = [line for line in status.stdout.splitlines() if line.split()[:1] == ["job_a/job_a"]]
    assert row.split()[1:] == ["canceled", "canceled"]
