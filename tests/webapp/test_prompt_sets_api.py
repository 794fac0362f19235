"""/api/v1/prompt-sets/: CRUD with nested ordered items, item validation, and jobs keeping their own copy."""

import pytest

from webapp.prompts.models import PromptItem, PromptSet

URL = "/api/v1/prompt-sets/"
pytestmark = pytest.mark.django_db

ITEMS = [
    {"prompt": "[trigger] on a beach", "width": 128, "height": 128, "num_frames": 9, "sample_steps": 2},
    {"prompt": "[trigger] in the snow", "neg": "blurry", "seed": 7, "guidance_scale": 0.0},
    {"prompt": "a cat", "trigger_word": "zzz", "fps": 24},
]


def create(api, name="beach", items=ITEMS, **fields):
    response = api.post(URL, {"name": name, "items": items, **fields}, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def test_create_keeps_items_in_order_with_only_the_fields_given(api):
    body = create(api, trigger_word="sks")
    assert (body["name"], body["owner"], body["trigger_word"]) == ("beach", "alice", "sks")
    assert body["items"] == ITEMS
    assert api.get(f"{URL}{body['id']}/").json() == body


def test_list_and_filter_by_name(api):
    create(api, "b-set")
    create(api, "a-set", items=ITEMS[:1])
    listed = api.get(URL).json()
    assert listed["count"] == 2 and [s["name"] for s in listed["results"]] == ["a-set", "b-set"]
    assert [s["name"] for s in api.get(URL, {"name": "b-set"}).json()["results"]] == ["b-set"]


def test_put_replaces_items_and_patch_keeps_them(api):
    prompt_set = create(api)
    url = f"{URL}{prompt_set['id']}/"
    new_items = [{"prompt": "second"}, {"prompt": "first", "width": 256}]
    response = api.put(url, {"name": "renamed", "items": new_items}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["items"] == new_items
    assert PromptItem.objects.count() == 2

    response = api.patch(url, {"trigger_word": "ohwx"}, format="json")
    assert response.status_code == 200
    assert (response.json()["name"], response.json()["trigger_word"]) == ("renamed", "ohwx")
    assert api.get(url).json()["items"] == new_items


def test_delete_removes_the_set_and_its_items(api):
    prompt_set = create(api)
    assert api.delete(f"{URL}{prompt_set['id']}/").status_code == 204
    assert not PromptSet.objects.exists() and not PromptItem.objects.exists()
    assert api.get(f"{URL}{prompt_set['id']}/").json()["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    "items,field,code",
    [
        ([{"prompt": "x", "width": 5000}], "items[0].width", "max_value"),
        ([{"prompt": "ok"}, {"prompt": "x", "sample_steps": 0}], "items[1].sample_steps", "min_value"),
        ([{"prompt": "x", "guidance_scale": 21}], "items[0].guidance_scale", "max_value"),
        ([{"prompt": "x", "seed": -2}], "items[0].seed", "min_value"),
        ([{"width": 128}], "items[0].prompt", "required"),
        ([], "items", "empty"),
    ],
)
def test_invalid_items_are_rejected_by_field(api, items, field, code):
    response = api.post(URL, {"name": "bad", "items": items}, format="json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"][field][0]["code"] == code
    assert not PromptSet.objects.exists()


def test_invalid_update_leaves_the_set_unchanged(api):
    prompt_set = create(api)
    url = f"{URL}{prompt_set['id']}/"
    response = api.put(url, {"name": "x", "items": [{"prompt": "x", "height": 5000}]}, format="json")
    assert response.json()["error"]["details"]["items[0].height"][0]["code"] == "max_value"
    assert api.get(url).json() == prompt_set


def test_a_job_keeps_its_prompts_when_the_set_is_edited(api):
    prompt_set = create(api, trigger_word="sks")
    response = api.post("/api/v1/jobs/", {"prompt_set": prompt_set["id"], "loras": []}, format="json")
    assert response.status_code == 201, response.json()
    job = response.json()
    assert job["prompt_set"] == prompt_set["id"]
    assert [p["prompt"] for p in job["prompts"]] == ["sks on a beach", "sks in the snow", "a cat"]
    assert (job["prompts"][0]["width"], job["prompts"][0]["num_frames"]) == (128, 9)
    assert (job["prompts"][1]["seed"], job["prompts"][1]["neg"], job["prompts"][2]["fps"]) == (7, "blurry", 24)

    api.put(f"{URL}{prompt_set['id']}/", {"name": "beach", "items": [{"prompt": "edited"}]}, format="json")
    assert api.get(f"/api/v1/jobs/{job['id']}/").json()["prompts"] == job["prompts"]
    api.delete(f"{URL}{prompt_set['id']}/")
    after_delete = api.get(f"/api/v1/jobs/{job['id']}/").json()
    assert after_delete["prompts"] == job["prompts"] and after_delete["prompt_set"] is None


def test_patch_cannot_store_an_item_without_a_prompt(api):
    prompt_set = create(api)
    response = api.patch(f"{URL}{prompt_set['id']}/", {"items": [{"width": 128}]}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["details"]["items[0].prompt"][0]["code"] == "required"
