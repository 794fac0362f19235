"""Limits that hold at every door: JOB_MAX_PROMPTS for jobs and prompt sets (both APIs, the prompt-set
pages and admin, the submit page, the admin's add form, re-run, retry) and the staff-only top priorities."""

import dataclasses

import pytest
from django.conf import settings
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from webapp.core.errors import ApiError
from webapp.jobs.models import GenerationJob, JobStatus
from webapp.jobs.services import job_spec, job_submit
from webapp.loras.services import lora_resolve
from webapp.prompts.models import PromptItem, PromptSet
from webapp.prompts.services import prompt_set_create, prompt_set_update

pytestmark = pytest.mark.django_db
JOBS, SETS, V1 = "/api/v1/jobs/", "/api/v1/prompt-sets/", "/v1/inference"
PROMPT = {"prompt": "a cat", "width": 128, "height": 128, "num_frames": 9, "sample_steps": 2}
LIMIT = settings.JOB_MAX_PROMPTS
TOP = settings.PRIORITY_STAFF_ONLY_FROM


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture
def alice(django_user_model, tiny_model, lora_files):
    return django_user_model.objects.create_user(username="alice", password="pw-alice-123")


@pytest.fixture
def boss(django_user_model, tiny_model, lora_files):
    return django_user_model.objects.create_user(username="boss", password="pw-boss-123", is_staff=True)


@pytest.fixture
def root(django_user_model, tiny_model, lora_files):
    return django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")


def big_set(owner, count: int) -> PromptSet:
    """A set made before the limit (or behind every form's back)."""
    prompt_set = PromptSet.objects.create(name=f"big-{count}", owner=owner)
    PromptItem.objects.bulk_create(
        PromptItem(
            prompt_set=prompt_set,
            position=i,
            prompt=f"prompt {i}",
            **{k: v for k, v in PROMPT.items() if k != "prompt"},
        )
        for i in range(count)
    )
    return prompt_set


def legacy_job(owner, *, prompts: int = 1, priority: int = 0, status=JobStatus.FAILED) -> GenerationJob:
    rendered = {"neg": "", "guidance_scale": 5.0, "fps": 16, "lora_scale": None}
    resolved = [{**PROMPT, **rendered, "seed": 42 + i} for i in range(prompts)]
    return GenerationJob.objects.create(
        owner=owner, status=status, priority=priority, prompts=resolved, progress={"prompts": prompts}
    )


def error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:500]
    body = response.json()["error"]
    assert body["code"] == code, body
    return body


# --- prompt sets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [LIMIT + 1, 10 * LIMIT])
def test_the_api_refuses_a_prompt_set_larger_than_a_job(alice, count):
    items = [{"prompt": f"p{i}"} for i in range(count)]
    body = error(client_for(alice).post(SETS, {"name": "big", "items": items}, format="json"), 400, "VALIDATION_ERROR")
    assert body["details"]["items"][0]["code"] == "max_length"
    assert not PromptSet.objects.exists()


def test_the_api_takes_a_set_of_exactly_the_limit_and_refuses_growing_it(alice):
    api = client_for(alice)
    response = api.post(SETS, {"name": "full", "items": [{"prompt": f"p{i}"} for i in range(LIMIT)]}, format="json")
    assert response.status_code == 201 and len(response.json()["items"]) == LIMIT
    url = f"{SETS}{response.json()['id']}/"
    grown = {"name": "full", "items": [{"prompt": f"p{i}"} for i in range(LIMIT + 1)]}
    error(api.put(url, grown, format="json"), 400, "VALIDATION_ERROR")
    error(api.patch(url, {"items": grown["items"]}, format="json"), 400, "VALIDATION_ERROR")
    assert PromptItem.objects.count() == LIMIT


def test_the_services_refuse_more_items_than_a_job_may_have(alice):
    items = [{"prompt": f"p{i}"} for i in range(LIMIT + 1)]
    with pytest.raises(ApiError) as refused:
        prompt_set_create(owner=alice, name="big", items=items)
    assert refused.value.code == "TOO_MANY_PROMPTS"
    prompt_set = prompt_set_create(owner=alice, name="ok", items=items[:LIMIT])
    with pytest.raises(ApiError):
        prompt_set_update(prompt_set=prompt_set, actor=alice, items=items)
    assert prompt_set.items.count() == LIMIT


def test_the_prompt_set_page_refuses_more_items_than_a_job_may_have(alice):
    client = Client()
    client.force_login(alice)
    post = {"name": "big", "action": "save", "items-TOTAL_FORMS": str(LIMIT + 1), "items-INITIAL_FORMS": "0"}
    post |= {f"items-{i}-prompt": f"p{i}" for i in range(LIMIT + 1)}
    response = client.post("/prompt-sets/new/", post)
    assert response.status_code == 400
    assert f"at most {LIMIT} prompts" in response.content.decode()
    assert not PromptSet.objects.exists()


def test_the_admin_refuses_more_items_than_a_job_may_have(client, root):
    client.force_login(root)
    post = {"name": "big", "trigger_word": "", "items-TOTAL_FORMS": str(LIMIT + 1), "items-INITIAL_FORMS": "0"}
    post |= {"items-MIN_NUM_FORMS": "0", "items-MAX_NUM_FORMS": "1000"}
    post |= {f"items-{i}-prompt": f"p{i}" for i in range(LIMIT + 1)} | {
        f"items-{i}-position": i for i in range(LIMIT + 1)
    }
    response = client.post("/admin/prompts/promptset/add/", post)
    assert response.status_code == 200 and f"at most {LIMIT}" in response.content.decode()
    assert not PromptSet.objects.exists()


# --- jobs from a (legacy) set larger than the limit, by every door --------------------------------------------


def test_a_job_from_a_too_large_set_is_refused_by_the_api(alice):
    prompt_set = big_set(alice, LIMIT + 1)
    body = error(client_for(alice).post(JOBS, {"prompt_set": prompt_set.pk}, format="json"), 400, "TOO_MANY_PROMPTS")
    assert str(LIMIT) in body["message"] and "prompts" in body["details"]
    assert not GenerationJob.objects.exists()


def test_a_job_from_a_set_of_exactly_the_limit_is_queued(alice):
    prompt_set = big_set(alice, LIMIT)
    response = client_for(alice).post(JOBS, {"prompt_set": prompt_set.pk}, format="json")
    assert response.status_code == 201 and len(response.json()["prompts"]) == LIMIT


def test_a_job_from_a_too_large_set_is_refused_by_the_submit_page(alice):
    prompt_set = big_set(alice, LIMIT + 1)
    client = Client()
    client.force_login(alice)
    form = {"prompt_rows": "1", "scheduler": "auto", "speed": "exact", "priority": "0"}
    response = client.post("/jobs/new/", {**form, "prompt_semantics": "reference", "prompt_set": prompt_set.pk})
    assert response.status_code == 400 and "TOO_MANY_PROMPTS" in response.content.decode()
    assert not GenerationJob.objects.exists()


def test_a_job_from_a_too_large_set_is_refused_by_the_admin(client, root):
    prompt_set = big_set(root, LIMIT + 1)
    client.force_login(root)
    form = {"prompt_set": prompt_set.pk, "scheduler": "auto", "priority": "0", "speed": "exact"}
    response = client.post("/admin/jobs/generationjob/add/", {**form, "prompt_semantics": "reference"})
    assert response.status_code == 200 and "TOO_MANY_PROMPTS" in response.content.decode()
    assert not GenerationJob.objects.exists()


def test_job_spec_and_job_submit_themselves_refuse_too_many_prompts(alice):
    with pytest.raises(ApiError) as refused:
        job_spec(owner=alice, loras=[], options={}, prompts=[dict(PROMPT)] * (LIMIT + 1))
    assert refused.value.code == "TOO_MANY_PROMPTS"
    spec = job_spec(owner=alice, loras=[], options={}, prompts=[dict(PROMPT)])
    with pytest.raises(ApiError) as refused:
        job_submit(owner=alice, spec=dataclasses.replace(spec, prompts=[dict(PROMPT)] * (LIMIT + 1)))
    assert refused.value.code == "TOO_MANY_PROMPTS"
    assert not GenerationJob.objects.exists()


@pytest.mark.parametrize("door", ["jobs", "v1"])
def test_both_apis_refuse_too_many_prompts(alice, door):
    prompts = [PROMPT] * (LIMIT + 1)
    url, body = (
        (JOBS, {"prompts": prompts})
        if door == "jobs"
        else (V1, {"model": "wan21_14b", "loras": [], "prompts": prompts})
    )
    details = error(client_for(alice).post(url, body, format="json"), 400, "VALIDATION_ERROR")["details"]
    assert details["prompts"][0]["code"] == "max_length"


@pytest.mark.parametrize("action", ["rerun", "retry"])
def test_rerun_and_retry_refuse_a_job_with_too_many_prompts(alice, action):
    job = legacy_job(alice, prompts=LIMIT + 1)
    error(client_for(alice).post(f"{JOBS}{job.pk}/{action}/"), 400, "TOO_MANY_PROMPTS")
    assert GenerationJob.objects.count() == 1 and GenerationJob.objects.get().status == JobStatus.FAILED


# --- priorities -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("priority", [TOP, 9])
@pytest.mark.parametrize("door", ["jobs", "v1"])
def test_members_may_not_use_the_top_priorities(alice, door, priority):
    if door == "jobs":
        response = client_for(alice).post(JOBS, {"prompts": [PROMPT], "priority": priority}, format="json")
    else:
        body = {"model": "wan21_14b", "loras": [], "prompts": [PROMPT], "priority": priority}
        response = client_for(alice).post(V1, body, format="json")
    body = error(response, 403, "PRIORITY_NOT_ALLOWED")
    assert f"0 to {TOP - 1}" in body["message"] and "priority" in body["details"]
    assert not GenerationJob.objects.exists()


def test_members_may_use_the_priorities_below_and_staff_all(alice, boss):
    assert client_for(alice).post(JOBS, {"prompts": [PROMPT], "priority": TOP - 1}, format="json").status_code == 201
    for priority in (TOP, 9):
        assert (
            client_for(boss).post(JOBS, {"prompts": [PROMPT], "priority": priority}, format="json").status_code == 201
        )
    assert sorted(GenerationJob.objects.values_list("priority", flat=True)) == [TOP - 1, TOP, 9]


def test_the_submit_page_shows_the_refusal_next_to_priority(alice):
    client = Client()
    client.force_login(alice)
    form = {"prompt_rows": "1", "scheduler": "auto", "speed": "exact", "prompt_semantics": "reference"}
    response = client.post("/jobs/new/", {**form, "priority": "9", "prompt-0-prompt": "a cat"})
    assert response.status_code == 400 and "PRIORITY_NOT_ALLOWED" in response.content.decode()
    assert not GenerationJob.objects.exists()


def test_the_admin_lets_staff_use_the_top_priority(client, root):
    prompt_set = big_set(root, 1)
    client.force_login(root)
    form = {"prompt_set": prompt_set.pk, "scheduler": "auto", "priority": "9", "speed": "exact"}
    response = client.post("/admin/jobs/generationjob/add/", {**form, "prompt_semantics": "reference"})
    assert response.status_code == 302 and GenerationJob.objects.get().priority == 9


def test_a_members_rerun_of_a_top_priority_job_drops_to_the_highest_it_may_use(alice, boss):
    job = legacy_job(boss, priority=9, status=JobStatus.SUCCEEDED)
    mine = client_for(alice).post(f"{JOBS}{job.pk}/rerun/")
    assert mine.status_code == 201 and mine.json()["priority"] == TOP - 1
    theirs = client_for(boss).post(f"{JOBS}{job.pk}/rerun/")
    assert theirs.status_code == 201 and theirs.json()["priority"] == 9


@pytest.mark.parametrize("actor,kept", [("owner", False), ("staff", True)])
def test_a_retry_keeps_a_top_priority_only_for_staff(alice, boss, actor, kept):
    job = legacy_job(alice, priority=9)  # from before the rule
    response = client_for(alice if actor == "owner" else boss).post(f"{JOBS}{job.pk}/retry/")
    assert response.status_code == 200 and response.json()["status"] == "queued"
    assert GenerationJob.objects.get().priority == (9 if kept else TOP - 1)


def test_a_page_rerun_and_an_allowed_priority_stay_as_they_were(alice):
    lora_resolve(ref="job_a/job_a.safetensors")
    job = legacy_job(alice, priority=TOP - 1, status=JobStatus.SUCCEEDED)
    client = Client()
    client.force_login(alice)
    assert client.post(f"/jobs/{job.pk}/rerun/").status_code == 302
    assert sorted(GenerationJob.objects.values_list("priority", flat=True)) == [TOP - 1, TOP - 1]


def test_the_rule_can_be_opened_to_everyone(alice, settings):
    settings.PRIORITY_STAFF_ONLY_FROM = 10
    assert client_for(alice).post(JOBS, {"prompts": [PROMPT], "priority": 9}, format="json").status_code == 201
