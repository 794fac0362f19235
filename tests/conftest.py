"""Shared fixtures: a tiny random-weight Wan checkpoint, ai-toolkit LoRAs, API clients and a real worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings

from workers.celery_app import worker_argv
from workers.pipeline.checkpoints import write_aitoolkit_lora, write_random_wan
from workers.pipeline.shapes import TINY_TRANSFORMER, WanShape

ROOT = Path(__file__).resolve().parent.parent
# Tests sign users in by the hundred: a fast hash instead of PBKDF2's 10^6 rounds (as cookiecutter-django's tests).
settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
TINY_SHAPE = WanShape.of(TINY_TRANSFORMER)
SMALL = {"width": 128, "height": 128, "num_frames": 9, "sample_steps": 3}


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The checkpoint settings.WAN_MODEL_PATH points at, written once."""
    path = Path(settings.WAN_MODEL_PATH)
    config = path / "transformer" / "config.json"
    if (
        not config.exists()
        or json.loads(config.read_text()).get("rope_max_seq_len") != TINY_TRANSFORMER["rope_max_seq_len"]
    ):  # missing, or written by an older version of the tiny checkpoint
        shutil.rmtree(path, ignore_errors=True)
        write_random_wan(path)
    return path


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory) -> dict[str, Path]:
    """Two ai-toolkit LoRAs for the tiny model (A trained with 0.9.4, B with 0.9.2) under LORA_ROOT."""
    root = settings.LORA_ROOT
    return {
        "a": write_aitoolkit_lora(root / "job_a" / "job_a.safetensors", shape=TINY_SHAPE, seed=1, scale=0.3),
        "b": write_aitoolkit_lora(
            root / "job_b" / "job_b.safetensors", shape=TINY_SHAPE, seed=2, scale=0.3, software_version="0.9.2"
        ),
        "minimal": write_aitoolkit_lora(root / "my_lora_job" / "my_lora.safetensors", shape=TINY_SHAPE, seed=3),
    }


# Tests that use these start worker, server, browser or follower processes: `make test` runs them,
# `make test-fast` (the edit-test loop) leaves them out.
PROCESS_FIXTURES = {"start_worker", "celery_worker", "web_server", "s3_endpoint", "live_server", "browser", "split"}


def pytest_collection_modifyitems(items):
    for item in items:
        if PROCESS_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.processes)


@pytest.fixture(autouse=True)
def fresh_throttles(settings):
    """Throttle counts key on user ids, which SQLite reuses from test to test (PostgreSQL's sequences do
    not): start each test with an empty in-process cache. (A Redis cache is never flushed here: in tests
    it shares its database with the broker.)"""
    from django.core.cache import cache

    if settings.CACHES["default"]["BACKEND"].endswith("LocMemCache"):
        cache.clear()


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def api(user, tiny_model, lora_files):
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


class WorkerProcess:
    """A real `celery worker` process (solo pool; the GPU queue, or `queues`) on the test database and Redis broker."""

    def __init__(self, name: str, queues: str = "gpu", **env):
        from django.db import connection

        environ = dict(
            os.environ,
            MEDIA_ROOT=str(settings.MEDIA_ROOT),
            JOB_PROGRESS_INTERVAL_S="0",
            **{k: str(v) for k, v in env.items()},
        )
        db = settings.DATABASES["default"]
        environ["DATABASE_URL"] = (
            f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{connection.settings_dict['NAME']}"
        )
        self.log = open(Path(settings.VAR_DIR) / f"worker-{name}.log", "w")
        self.proc = subprocess.Popen(
            worker_argv(queues=queues, name=f"{name}@test"),
            cwd=ROOT,
            env=environ,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def flush_broker():
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("worker tests run on Redis (make test sets REDIS_URL)")
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()


@pytest.fixture
def start_worker(transactional_db, tiny_model, lora_files):
    """Start workers for one test; all are stopped (or already killed) at its end."""
    workers = []

    def start(name: str, **env) -> WorkerProcess:
        worker = WorkerProcess(name, **env)
        workers.append(worker)
        return worker

    flush_broker()
    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture(scope="module")
def celery_worker(django_db_setup, django_db_blocker, tiny_model, lora_files):
    """One worker shared by a module's end-to-end tests."""
    flush_broker()
    worker = WorkerProcess("e2e")
    yield worker
    worker.stop()


@pytest.fixture
def web_server(transactional_db, tiny_model, lora_files):
    """gunicorn on a free port, on the test database, with this run's media and LoRA folders."""
    from django.db import connection

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    db = settings.DATABASES["default"]
    env = dict(
        os.environ,
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{connection.settings_dict['NAME']}",
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        LORA_ROOT=str(settings.LORA_ROOT),
    )
    log = open(Path(settings.VAR_DIR) / "gunicorn.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "webapp.wsgi", "-b", f"127.0.0.1:{port}", "-w", "4", "--timeout", "60"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )

    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(up, timeout=30)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)
    log.close()


def wait_for(predicate, timeout=120.0, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
