"""/api/v1/jobs/: submit with a LoRA stack, validation, filters, cancel/retry, auth, and the OpenAPI pages."""

import uuid

import pytest
from rest_framework.test import APIClient

from webapp.jobs.models import GenerationJob, JobStatus
from webapp.loras.models import Lora

URL = "/api/v1/jobs/"
SMALL = {"width": 128, "height": 128, "num_frames": 9, "sample_steps": 2}
STACK = [{"lora": "job_a/job_a.safetensors", "multiplier": 0.5}, {"lora": "job_b/job_b.safetensors"}]
pytestmark = pytest.mark.django_db


def submit(api, prompts=("a cat",), loras=(), status=201, **fields):
    body = {"loras": list(loras), "prompts": [{"prompt": p, **SMALL} for p in prompts], **fields}
    response = api.post(URL, body, format="json")
    assert response.status_code == status, response.json()
    return response.json()


def set_status(job_id, status):
    GenerationJob.objects.filter(pk=job_id).update(status=status)


@pytest.fixture
def bob(django_user_model, tiny_model, lora_files):
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user(username="bob", password="pw-bob-123"))
    return client


def test_create_with_inline_prompts_and_a_lora_stack(api):
    job = submit(api, ["[trigger] walking", "a dog"], STACK, trigger_word="sks", priority=5, scheduler="euler")
    assert (job["status"], job["owner"], job["model"]) == ("queued", "alice", "wan21_14b")
    assert (job["priority"], job["scheduler"], job["prompt_set"]) == (5, "euler", None)
    assert [(jl["name"], jl["multiplier"]) for jl in job["loras"]] == [("job_a/job_a", 0.5), ("job_b/job_b", 1.0)]
    assert job["loras"][0]["sha256"] == Lora.objects.get(name="job_a/job_a").sha256
    assert job["prompts"][0] == {
        "prompt": "sks walking",
        "neg": "",
        "width": 128,
        "height": 128,
        "num_frames": 9,
        "sample_steps": 2,
        "guidance_scale": 4.0,
        "seed": 42,
        "fps": 16,
        "lora_scale": None,
    }
    assert job["prompts"][1]["seed"] == 43
    assert job["progress"] == {"prompt": 0, "prompts": 2, "step": 0, "steps": 2, "fraction": 0.0}
    assert job["outputs"] == [] and job["started_at"] is None
    assert api.get(f"{URL}{job['id']}/").json() == job


def test_stack_uses_each_loras_own_default_multiplier(api):
    Lora.objects.filter(pk=submit(api, loras=STACK[1:])["loras"][0]["lora"]).update(default_multiplier=0.8)
    job = submit(api, loras=[{"lora": "job_b/job_b"}, {"lora": "job_a/job_a.safetensors", "multiplier": None}])
    assert [jl["multiplier"] for jl in job["loras"]] == [0.8, 1.0]


@pytest.mark.parametrize(
    "body",
    [
        {"loras": [], "prompt_set": 1, "prompts": [{"prompt": "x"}]},
        {"loras": []},
        {"loras": [], "prompts": []},
    ],
    ids=["both", "neither", "empty-prompts"],
)
def test_prompt_set_or_prompts_exactly_one(api, body):
    response = api.post(URL, body, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"
    assert not GenerationJob.objects.exists()


def test_unknown_prompt_set_and_lora_are_404(api):
    response = api.post(URL, {"prompt_set": 999999, "loras": []}, format="json")
    assert response.status_code == 404 and response.json()["error"]["code"] == "PROMPT_SET_NOT_FOUND"
    response = api.post(
        URL, {"prompts": [{"prompt": "x"}], "loras": [{"lora": "nope/none.safetensors"}]}, format="json"
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "LORA_NOT_FOUND"
    assert not GenerationJob.objects.exists()


@pytest.mark.parametrize(
    "fields,detail,code",
    [
        ({"loras": [{"lora": "job_a/job_a.safetensors"}] * 5}, "loras", "max_length"),
        ({"loras": [{"lora": "job_a/job_a.safetensors", "multiplier": 2.5}]}, "loras[0].multiplier", "max_value"),
        ({"priority": 10}, "priority", "max_value"),
        ({"scheduler": "ddim"}, "scheduler", "invalid_choice"),
        ({"prompts": [{"prompt": "x", "width": 5000}]}, "prompts[0].width", "max_value"),
    ],
)
def test_invalid_fields_are_400_with_details(api, fields, detail, code):
    response = api.post(URL, {"prompts": [{"prompt": "x"}], "loras": [], **fields}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and error["details"][detail][0]["code"] == code
    assert not GenerationJob.objects.exists()


def test_list_filters_by_status_owner_and_lora(api, user, bob):
    plain = submit(api, ["plain"])
    with_a = submit(api, ["with a"], STACK[:1])
    bobs = submit(bob, ["bob's"], STACK[1:])
    set_status(plain["id"], JobStatus.SUCCEEDED)
    lora_a = with_a["loras"][0]["lora"]

    def ids(**query):
        return [job["id"] for job in api.get(URL, query).json()["results"]]

    assert ids() == [bobs["id"], with_a["id"], plain["id"]]
    assert ids(status="queued") == [bobs["id"], with_a["id"]]
    assert ids(status="succeeded") == [plain["id"]]
    assert ids(owner=user.pk) == [with_a["id"], plain["id"]]
    assert ids(lora=lora_a) == [with_a["id"]]
    assert ids(lora=lora_a, status="succeeded") == []


def test_same_lora_twice_in_a_stack_is_refused(api):
    response = api.post(
        URL,
        {"prompts": [{"prompt": "x"}], "loras": [{"lora": "job_a/job_a.safetensors", "multiplier": 0.5}] * 2},
        format="json",
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "LORA_DUPLICATE"


def test_unknown_job_is_job_not_found(api):
    for job_id in (uuid.uuid4(), "not-a-uuid"):
        response = api.get(f"{URL}{job_id}/")
        assert response.status_code == 404 and response.json()["error"]["code"] == "JOB_NOT_FOUND"
        assert api.post(f"{URL}{job_id}/cancel/").json()["error"]["code"] == "JOB_NOT_FOUND"


def test_cancel_is_idempotent_and_refused_once_finished(api):
    job = submit(api)
    for _ in range(2):
        response = api.post(f"{URL}{job['id']}/cancel/")
        assert response.status_code == 200
        assert (response.json()["status"], response.json()["error_code"]) == ("canceled", "CANCELED")
        assert response.json()["finished_at"] is not None

    done = submit(api)
    set_status(done["id"], JobStatus.SUCCEEDED)
    response = api.post(f"{URL}{done['id']}/cancel/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "JOB_NOT_CANCELABLE"
    assert GenerationJob.objects.get(pk=done["id"]).status == JobStatus.SUCCEEDED


def test_retry_requeues_a_canceled_job_only(api):
    job = submit(api, loras=STACK)
    response = api.post(f"{URL}{job['id']}/retry/")
    assert response.status_code == 409 and response.json()["error"]["code"] == "JOB_NOT_RETRYABLE"

    api.post(f"{URL}{job['id']}/cancel/")
    retried = api.post(f"{URL}{job['id']}/retry/")
    assert retried.status_code == 200
    body = retried.json()
    assert (body["status"], body["error_code"], body["error_message"], body["finished_at"]) == ("queued", "", "", None)
    assert body["prompts"] == job["prompts"] and body["loras"] == job["loras"]

    set_status(job["id"], JobStatus.FAILED)
    assert api.post(f"{URL}{job['id']}/retry/").json()["status"] == "queued"


def test_unauthenticated_requests_are_401(api):
    anonymous = APIClient()
    for response in (
        anonymous.get(URL),
        anonymous.post(URL, {"prompts": [{"prompt": "x"}]}, format="json"),
        anonymous.get("/api/v1/loras/"),
        anonymous.get("/api/v1/prompt-sets/"),
    ):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "NOT_AUTHENTICATED"
    bad_token = APIClient(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert bad_token.get(URL).json()["error"]["code"] == "AUTHENTICATION_FAILED"
    assert not GenerationJob.objects.exists()


def test_openapi_schema_and_docs(api):
    schema = api.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "/api/v1/jobs/{id}/cancel/" in text and "/api/v1/loras/" in text and "/api/v1/prompt-sets/" in text
    docs = api.get("/api/docs/")
    assert docs.status_code == 200 and b"swagger" in docs.content.lower()


def test_trigger_defaults_to_the_first_lora_that_has_one(api):
    submit(api, loras=STACK)  # registers both
    Lora.objects.filter(name="job_a/job_a").update(trigger_word="ohwx")
    Lora.objects.filter(name="job_b/job_b").update(trigger_word="")
    job = submit(api, ["[trigger] dancing"], [{"lora": "job_b/job_b"}, {"lora": "job_a/job_a"}])
    assert job["prompts"][0]["prompt"] == "ohwx dancing"  # job_b has none, job_a's is used
    job = submit(api, ["[trigger] dancing"], [{"lora": "job_a/job_a"}], trigger_word="zzz")
    assert job["prompts"][0]["prompt"] == "zzz dancing"  # the request's own word wins
    assert submit(api, ["[trigger] dancing"])["prompts"][0]["prompt"] == "[trigger] dancing"  # no LoRA, no word
