"""The web tests' people and clients (alice, bob and a staff member, signed in to the pages or holding an
API token), jobs as stored (a resolved prompt, a finished job's real MP4), DNS answered from a table, and a
real browser for page tests (skipped where Chromium is not installed)."""

import socket

import numpy as np
import pytest
from django.core.files import File
from django.core.files.storage import default_storage
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from webapp.jobs.models import GenerationJob, JobOutput
from workers.pipeline.video import write_mp4

# a job's prompts are stored resolved, as job_submit stores them
RESOLVED = {
    "prompt": "a prompt",
    "neg": "",
    "width": 128,
    "height": 128,
    "num_frames": 9,
    "fps": 16,
    "sample_steps": 4,
    "guidance_scale": 4.0,
    "seed": 42,
}
# the prompt of a job whose output is `ramp_output`'s video
RAMP = {**RESOLVED, "prompt": "a ramp of colours", "width": 192, "height": 128, "num_frames": 17}


def client_of(user) -> Client:
    """A page client signed in as `user`."""
    client = Client()
    client.force_login(user)
    return client


def token_client(user) -> APIClient:
    """An API client sending a new token of `user`, as scripts do."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def alice(user):
    """alice, a team member who is not staff: the `user` the `api` client also signs in as."""
    return user


@pytest.fixture
def bob(django_user_model):
    """bob, another team member who is not staff."""
    return django_user_model.objects.create_user("bob", password="pw-bob-123")


@pytest.fixture
def bob_api(bob, tiny_model, lora_files) -> APIClient:
    return token_client(bob)


@pytest.fixture
def staff_api(django_user_model, tiny_model, lora_files) -> APIClient:
    return token_client(django_user_model.objects.create_user(username="boss", password="pw-boss-123", is_staff=True))


def ramp_output(job: GenerationJob, tmp_path, **fields) -> JobOutput:
    """The job's output 0 as a worker stores it: a real MP4 of RAMP's size and length, a colour ramp."""
    ramp = np.linspace(0, 255, 17 * 128 * 192 * 3).reshape(17, 128, 192, 3).astype(np.uint8)
    with write_mp4(ramp, tmp_path / "v.mp4", fps=16).open("rb") as fh:
        video = default_storage.save(f"outputs/{job.id}/000.mp4", File(fh))
    return JobOutput.objects.create(
        job=job,
        index=0,
        video=video,
        width=192,
        height=128,
        num_frames=17,
        fps=16,
        seed=42,
        scheduler="euler",
        **fields,
    )


@pytest.fixture
def dns(monkeypatch):
    """getaddrinfo answering from a table, so tests pick what a host 'resolves' to; the test's own Redis and
    database (127.0.0.1, localhost) still resolve unless the table names them."""
    table = {}
    real = socket.getaddrinfo

    def fake_getaddrinfo(host, port, *args, **kwargs):
        if host in ("127.0.0.1", "localhost") and host not in table:
            return real(host, port, *args, **kwargs)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    return table


@pytest.fixture
def browser():
    from tests.webapp.browser import start_chromium

    driver = start_chromium()
    yield driver
    driver.quit()
