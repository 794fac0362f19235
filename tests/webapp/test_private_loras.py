"""What the shared queue shows of a private LoRA: to others only "private LoRA" and its multiplier, on every
route (both APIs, the pages, the filters); and re-uploading its bytes confirms nothing."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from tests.conftest import TINY_SHAPE
from webapp.jobs.models import GenerationJob, JobOutput
from webapp.loras.models import Lora
from workers.pipeline.checkpoints import write_aitoolkit_lora

LORAS, JOBS, V1 = "/api/v1/loras/", "/api/v1/jobs/", "/v1/inference"
PROMPT = {"prompt": "a cat", "width": 128, "height": 128, "num_frames": 9, "sample_steps": 2}
HIDDEN = {"lora": None, "name": "private LoRA", "sha256": None, "multiplier": 0.7, "url": ""}
pytestmark = pytest.mark.django_db


class Member:
    """One user, through the API (token) and the pages (session)."""

    def __init__(self, user):
        self.user = user
        self.api = APIClient()
        self.api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        self.page = Client()
        self.page.force_login(user)


@pytest.fixture
def members(django_user_model, tiny_model, lora_files) -> dict[str, Member]:
    make = django_user_model.objects.create_user
    return {
        "alice": Member(make(username="alice", password="pw-alice-123")),
        "bob": Member(make(username="bob", password="pw-bob-123")),
        "boss": Member(make(username="boss", password="pw-boss-123", is_staff=True)),
    }


def lora_file(tmp_path, seed=61, stem="secret_job") -> bytes:
    """A LoRA's bytes (written once per test and seed: safetensors orders a header differently each time)."""
    path = tmp_path / f"{seed}" / f"{stem}.safetensors"
    if not path.exists():
        write_aitoolkit_lora(path, shape=TINY_SHAPE, seed=seed)
    return path.read_bytes()


def upload(client, data: bytes, filename="secret_job.safetensors", **fields):
    return client.post(LORAS, {"file": SimpleUploadedFile(filename, data), **fields}, format="multipart")


@pytest.fixture
def secret(members, tmp_path) -> dict:
    """Alice's private LoRA "secret-a", and her job with it at 0.7 (one output, its record naming it)."""
    response = upload(members["alice"].api, lora_file(tmp_path), name="secret-a", visibility="private")
    assert response.status_code == 201, response.content
    lora = response.json()
    job = members["alice"].api.post(
        JOBS, {"loras": [{"lora": "secret-a", "multiplier": 0.7}], "prompts": [PROMPT]}, format="json"
    )
    assert job.status_code == 201, job.content
    JobOutput.objects.create(
        job_id=job.json()["id"],
        index=0,
        video="outputs/x/000.mp4",
        width=128,
        height=128,
        num_frames=9,
        fps=16,
        seed=42,
        scheduler="euler",
        record={"seed": 42, "loras": [{"name": "secret-a", "sha256": lora["sha256"], "multiplier": 0.7}]},
    )
    return {**lora, "job": job.json()["id"]}


def leaks(text: str, secret: dict) -> list[str]:
    """What of the private LoRA shows in `text`: its name, its sha256 (or the 12 characters pages show)."""
    return [found for found in ("secret-a", secret["sha256"][:12]) if found in text]


# --- what each route shows --------------------------------------------------------------------------------------


def test_the_api_shows_others_a_placeholder_with_the_multiplier(members, secret):
    detail = members["bob"].api.get(f"{JOBS}{secret['job']}/")
    assert detail.json()["loras"] == [HIDDEN]
    assert detail.json()["outputs"][0]["record"]["loras"] == [
        {"name": "private LoRA", "sha256": None, "multiplier": 0.7}
    ]
    listed = members["bob"].api.get(JOBS)
    assert [job["loras"] for job in listed.json()["results"]] == [[HIDDEN]]
    assert leaks(detail.content.decode() + listed.content.decode(), secret) == []


@pytest.mark.parametrize("who", ["alice", "boss"])
def test_the_owner_and_staff_still_see_everything(members, secret, who):
    detail = members[who].api.get(f"{JOBS}{secret['job']}/").json()
    assert detail["loras"] == [
        {"lora": secret["id"], "name": "secret-a", "sha256": secret["sha256"], "multiplier": 0.7, "url": ""}
    ]
    assert detail["outputs"][0]["record"]["loras"][0]["name"] == "secret-a"
    page = members[who].page.get(f"/jobs/{secret['job']}/").content.decode()
    assert "secret-a" in page and secret["sha256"][:12] in page
    assert "secret-a" in members[who].page.get("/").content.decode()


def test_the_compat_result_and_status_show_nothing_of_it(members, secret):
    for path in ("result", "status"):
        response = members["bob"].api.get(f"/v1/requests/{secret['job']}/{path}")
        assert response.status_code == 200 and leaks(response.content.decode(), secret) == []


def test_the_pages_show_others_a_placeholder(members, secret):
    bob = members["bob"].page
    job_page = bob.get(f"/jobs/{secret['job']}/").content.decode()
    assert "private LoRA" in job_page and "@ 0.7" in job_page
    assert f"/loras/{secret['id']}/" not in job_page
    queue = bob.get("/").content.decode()
    assert "private LoRA @ 0.7" in queue
    htmx_row = bob.get(f"/jobs/{secret['job']}/status/").content.decode()
    assert leaks(job_page + queue + htmx_row, secret) == []


def test_a_deleted_private_lora_stays_hidden_from_others(members, secret):
    assert members["alice"].api.delete(f"{LORAS}{secret['id']}/").status_code == 204
    shown = members["bob"].api.get(f"{JOBS}{secret['job']}/").json()
    assert shown["loras"] == [{**HIDDEN, "name": "deleted LoRA"}]
    assert leaks(members["bob"].page.get(f"/jobs/{secret['job']}/").content.decode(), secret) == []
    assert members["alice"].api.get(f"{JOBS}{secret['job']}/").json()["loras"][0]["name"] == "secret-a"


def test_a_team_lora_is_shown_to_everyone(members, tmp_path):
    shared = upload(members["alice"].api, lora_file(tmp_path, 62), name="team-a").json()
    job = members["alice"].api.post(JOBS, {"loras": [{"lora": "team-a"}], "prompts": [PROMPT]}, format="json").json()
    assert members["bob"].api.get(f"{JOBS}{job['id']}/").json()["loras"][0]["sha256"] == shared["sha256"]
    assert "team-a" in members["bob"].page.get("/").content.decode()


# --- filters ------------------------------------------------------------------------------------------------------


def test_a_filter_by_a_lora_the_viewer_cannot_see_matches_nothing(members, secret):
    for lora in (secret["id"], 999999, "99999999999999999999", 1.5):
        assert members["bob"].api.get(JOBS, {"lora": lora}).json()["count"] == 0
    for who in ("alice", "boss"):
        assert members[who].api.get(JOBS, {"lora": secret["id"]}).json()["count"] == 1
    page = members["bob"].page.get("/", {"lora": secret["id"]})
    assert page.status_code == 200 and b'class="job-row"' not in page.content
    assert members["bob"].page.get("/", {"lora": 999999}).content.count(b'class="job-row"') == 0
    assert members["alice"].page.get("/", {"lora": secret["id"]}).content.count(b'class="job-row"') == 1


# --- the same bytes uploaded again -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [{}, {"name": "mine"}, {"name": "secret-a"}, {"visibility": "private"}, {"trigger_word": "zzz"}],
    ids=["plain", "named", "same-name", "private", "trigger"],
)
def test_re_uploading_anothers_private_bytes_is_a_first_upload(members, secret, tmp_path, fields):
    response = upload(members["bob"].api, lora_file(tmp_path), **fields)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] is True and body["owner"] == "bob" and body["id"] != secret["id"]
    assert body["message"].startswith("Registered ")
    assert body["name"] == fields.get("name", "secret_job")  # no suffix: names of others' private LoRAs don't count
    assert "secret-a" not in response.content.decode() or fields.get("name") == "secret-a"
    again = upload(members["bob"].api, lora_file(tmp_path), **fields)
    assert again.status_code == 200 and again.json()["id"] == body["id"]  # now bob's own: the usual dedup
    assert Lora.objects.get(pk=secret["id"]).name == "secret-a"


def test_the_page_upload_of_anothers_private_bytes_is_a_first_upload(members, secret, tmp_path):
    data = {"file": SimpleUploadedFile("secret_job.safetensors", lora_file(tmp_path)), "visibility": "team"}
    response = members["bob"].page.post("/loras/", data, follow=True)
    assert response.status_code == 200 and b"Registered secret_job" in response.content
    assert Lora.objects.filter(owner=members["bob"].user).count() == 1


def test_each_user_resolves_the_shared_bytes_to_the_lora_they_see(members, secret, tmp_path, django_user_model):
    bobs = upload(members["bob"].api, lora_file(tmp_path)).json()  # a team copy of the same bytes
    carol = Member(django_user_model.objects.create_user(username="carol", password="pw-carol-123"))
    expected = {"alice": secret["id"], "bob": bobs["id"], "carol": bobs["id"], "boss": bobs["id"]}
    for who, client in {**members, "carol": carol}.items():
        job = client.api.post(JOBS, {"loras": [{"lora": secret["sha256"]}], "prompts": [PROMPT]}, format="json")
        assert job.json()["loras"][0]["lora"] == expected[who], who
    assert members["bob"].api.get(LORAS, {"sha256": secret["sha256"]}).json()["count"] == 1
    assert members["boss"].api.get(LORAS, {"sha256": secret["sha256"]}).json()["count"] == 2


def test_a_root_file_that_another_holds_privately_registers_for_the_requester(members, lora_files):
    path = "job_a/job_a.safetensors"
    body = {"model": "wan21_14b", "loras": [{"path": path}], "prompts": [PROMPT]}
    alices = members["alice"].api.post(V1, body, format="json")
    assert alices.status_code == 200
    Lora.objects.update(visibility="private")  # as an admin may have set it
    for who in ("bob", "alice", "bob"):
        job = members[who].api.post(JOBS, {"loras": [{"lora": path}], "prompts": [PROMPT]}, format="json")
        assert job.status_code == 201, job.content
        lora = Lora.objects.get(pk=job.json()["loras"][0]["lora"])
        assert (lora.owner.username, lora.relative_path) == (who, path)
    assert Lora.objects.count() == 2 and GenerationJob.objects.count() == 4
