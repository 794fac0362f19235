"""The draft LoRA is the server's, not the first drafter's: registered with no owner for the team, whoever
submits the first draft, so a member can neither delete it nor find their own private copy of its bytes used."""

import hashlib

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.webapp.test_draft_preset import DRAFT_NAME, DRAFT_PATH, draft, draft_lora_file  # noqa: F401 - fixtures
from tests.webapp.test_jobs_api import submit
from tests.webapp.test_lora_urls import FakeResponse, allow, sent, server  # noqa: F401 - fixtures
from tests.webapp.test_permissions import LORAS, expect
from webapp.jobs.models import GenerationJob
from webapp.loras.models import Lora

pytestmark = pytest.mark.usefixtures("draft")
DRAFT_URL = "https://example.com/distill.safetensors"


def draft_lora(job: dict) -> dict:
    return job["loras"][-1]


def draft_lora_bytes() -> bytes:
    return (django_settings.LORA_ROOT / DRAFT_PATH).read_bytes()


@pytest.mark.django_db
def test_a_member_cannot_delete_the_draft_lora_the_first_draft_registered(api, bob_api, staff_api):
    first = submit(api, preset="draft")
    row = draft_lora(first)["lora"]
    shown = api.get(f"{LORAS}{row}/").json()
    assert (shown["name"], shown["owner"], shown["visibility"]) == (DRAFT_NAME, None, "team")
    expect(api.delete(f"{LORAS}{row}/"), 403, "PERMISSION_DENIED")
    expect(bob_api.delete(f"{LORAS}{row}/"), 403, "PERMISSION_DENIED")

    second = submit(bob_api, preset="draft")
    assert draft_lora(second)["lora"] == row and draft_lora(second)["multiplier"] == 0.9
    assert bob_api.post(f"/api/v1/jobs/{first['id']}/rerun/").status_code == 201
    assert Lora.objects.filter(name=DRAFT_NAME).count() == 1
    assert staff_api.delete(f"{LORAS}{row}/").status_code == 204


@pytest.mark.django_db
def test_a_members_private_copy_of_the_draft_lora_is_not_the_one_drafts_use(api, bob_api):
    upload = SimpleUploadedFile("distill.safetensors", draft_lora_bytes())
    private = bob_api.post(LORAS, {"file": upload, "visibility": "private"}, format="multipart").json()
    row = draft_lora(submit(api, preset="draft"))["lora"]
    assert row != private["id"] and api.get(f"{LORAS}{row}/").json()["owner"] is None
    assert bob_api.delete(f"{LORAS}{private['id']}/").status_code == 204
    assert draft_lora(submit(bob_api, preset="draft"))["lora"] == row


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("sent")
def test_a_draft_lora_named_by_url_is_registered_for_the_team_when_fetched(api, bob_api, settings, server):  # noqa: F811
    from workers import tasks

    routes, seen = server
    body = draft_lora_bytes()
    routes[("example.com", "/distill.safetensors")] = lambda: FakeResponse(
        body, headers={"Content-Length": str(len(body))}
    )
    settings.DRAFT_LORA = DRAFT_URL
    job = submit(api, preset="draft")
    assert tasks.fetch_job_loras(job["id"]) == "fetched" and len(seen) == 1
    row = GenerationJob.objects.get(pk=job["id"]).job_loras.last().lora
    assert (row.sha256, row.owner, row.visibility) == (hashlib.sha256(body).hexdigest(), None, "team")
    expect(api.delete(f"{LORAS}{row.pk}/"), 403, "PERMISSION_DENIED")
    assert draft_lora(submit(bob_api, preset="draft"))["lora"] == row.pk
