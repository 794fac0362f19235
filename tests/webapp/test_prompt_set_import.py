"""Prompt sets imported from ai-toolkit training configs: upstream's Wan 2.1 14B example, the `prompts:` form
with inline flags, the newer `samples:` form, bad files, re-import after more training, the page and the API."""

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from rest_framework.test import APIClient

from tests.webapp.browser import needs_chromium, screenshot, sign_in
from webapp.jobs.models import GenerationJob
from webapp.prompts.models import PromptSet

URL = "/api/v1/prompt-sets/import/"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ai_toolkit"
UPSTREAM_WAN21_14B = FIXTURES / "train_lora_wan21_14b_24gb.yaml"  # ostris/ai-toolkit config/examples, verbatim
SAMPLES_FORM = FIXTURES / "wan21_14b_samples.yaml"
UPSTREAM_PROMPT = "woman playing the guitar, on stage, singing a song, laser lights, punk rocker"


def config_with(sample: str, *, name: str = "flags_run", trigger: str = "sks") -> bytes:
    """A minimal training config around a sample section (given as indented YAML lines)."""
    head = f'job: extension\nconfig:\n  name: "{name}"\n  process:\n    - type: sd_trainer\n'
    if trigger:
        head += f'      trigger_word: "{trigger}"\n'
    return (head + "      sample:\n" + sample).encode()


FLAGS = config_with(
    """\
        width: 832
        height: 480
        num_frames: 33
        fps: 16
        seed: 42
        walk_seed: true
        guidance_scale: 5
        sample_steps: 30
        prompts:
          - "[trigger] surfing a wave --n blurry, lowres --w 480 --h 832 --frames 40"
          - "[trigger] in the snow --seed 7 --cfg 3.5 --steps 20 --gr 0.7"
          - "close-up of [name] --m 0.6"
"""
)


def upload(path_or_bytes, filename="config.yaml") -> SimpleUploadedFile:
    data = path_or_bytes.read_bytes() if isinstance(path_or_bytes, Path) else path_or_bytes
    return SimpleUploadedFile(filename, data, content_type="application/x-yaml")


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def api_of():
    def make(user) -> APIClient:
        client = APIClient()
        client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def api(alice, api_of):
    return api_of(alice)


def import_config(api, data, status=201, **fields):
    response = api.post(URL, {"config": upload(data), **fields}, format="multipart")
    assert response.status_code == status, response.json()
    return response.json()


@pytest.mark.django_db
def test_upstream_wan21_14b_example_imports_as_its_previews_rendered(api):
    body = import_config(api, UPSTREAM_WAN21_14B)
    assert (body["name"], body["owner"], body["trigger_word"]) == ("my_first_wan21_14b_lora_v1", "alice", "p3r5on")
    assert body["items"] == [
        {
            "prompt": UPSTREAM_PROMPT,
            "width": 832,
            "height": 480,
            "num_frames": 41,  # 40 in the config
            "fps": 15,
            "guidance_scale": 5.0,
            "sample_steps": 30,
            "seed": 42,
        }
    ]
    assert body["notes"].splitlines() == [
        "Imported from the ai-toolkit config of run my_first_wan21_14b_lora_v1.",
        "num_frames 40 -> 41 (Wan needs 4k+1).",
    ]
    assert api.get(f"/api/v1/prompt-sets/{body['id']}/").json() == body


@pytest.mark.django_db
def test_prompts_with_inline_flags_become_explicit_fields_and_walk_seed_counts_up(api):
    body = import_config(api, FLAGS)
    assert body["trigger_word"] == "sks"
    assert body["items"] == [
        {
            "prompt": "[trigger] surfing a wave",
            "neg": "blurry, lowres",
            "width": 480,
            "height": 832,
            "num_frames": 41,
            "fps": 16,
            "guidance_scale": 5.0,
            "sample_steps": 30,
            "seed": 42,
        },
        {
            "prompt": "[trigger] in the snow",
            "width": 832,
            "height": 480,
            "num_frames": 33,
            "fps": 16,
            "guidance_scale": 3.5,
            "sample_steps": 20,
            "seed": 7,
        },
        {
            "prompt": "close-up of [trigger]",
            "width": 832,
            "height": 480,
            "num_frames": 33,
            "fps": 16,
            "guidance_scale": 5.0,
            "sample_steps": 30,
            "seed": 44,
        },
    ]
    notes = body["notes"].splitlines()
    assert notes[0] == "Imported from the ai-toolkit config of run flags_run."
    assert "num_frames 40 -> 41 for prompt 1 (Wan needs 4k+1)." in notes
    assert "The previews used the LoRA at 1, prompt 3 at 0.6; choose the multiplier when rendering." in notes
    assert "[name] became [trigger] for prompt 3 (ai-toolkit replaces both with the trigger word)." in notes
    assert "--gr is not kept for prompt 2: a text-to-video prompt has no such setting." in notes


@pytest.mark.django_db
def test_samples_form_takes_each_samples_own_settings(api):
    body = import_config(api, SAMPLES_FORM, name="beach previews")
    assert (body["name"], body["trigger_word"]) == ("beach previews", "mrx")
    assert [(i["width"], i["height"], i["num_frames"], i["seed"]) for i in body["items"]] == [
        (832, 480, 33, 100),
        (480, 832, 33, 7),  # its own seed; the walk goes on from the section's for the next
        (832, 480, 49, 102),
    ]
    assert body["items"][2]["neg"] == "blurry, low quality"
    assert (body["items"][2]["guidance_scale"], body["items"][2]["sample_steps"]) == (3.5, 20)
    assert body["notes"].splitlines() == [
        "Imported from the ai-toolkit config of run mrx_beach_v2.",
        "num_frames 50 -> 49 for prompt 3 (Wan needs 4k+1).",
        "The previews used the LoRA at 0.8; choose the multiplier when rendering.",
    ]


@pytest.mark.django_db
def test_a_job_of_the_imported_set_renders_the_previews_prompts(api):
    prompt_set = import_config(api, SAMPLES_FORM)
    response = api.post("/api/v1/jobs/", {"prompt_set": prompt_set["id"]}, format="json")
    assert response.status_code == 201, response.json()
    first = GenerationJob.objects.get(pk=response.json()["id"]).prompts[0]
    assert (first["prompt"], first["width"], first["height"], first["num_frames"], first["seed"]) == (
        "mrx walking on a beach at sunset",
        832,
        480,
        33,
        100,
    )


NOT_A_TRAINING_CONFIG = [
    pytest.param(b"config: [unclosed\n", "not valid YAML", id="bad-yaml"),
    pytest.param(b"", "no config section", id="empty-file"),
    pytest.param(b"\xff\xfe\x00binary", "not UTF-8", id="binary"),
    pytest.param(b"config:\n  name: x\n  process: []\n", "no config.process list", id="no-process"),
    pytest.param(config_with("")[: -len("      sample:\n")], "no sample section", id="no-sample-section"),
    pytest.param(config_with("        width: 832\n"), "no prompts", id="no-prompts"),
    pytest.param(
        config_with("        samples:\n          - width: 832\n"), "has no prompt text", id="sample-no-prompt"
    ),
    pytest.param(config_with("        prompts: ['a cat --w wide']\n"), "--w needs a number", id="bad-flag"),
    pytest.param(config_with("        width: 9000\n        prompts: [a cat]\n"), "width", id="out-of-range"),
    pytest.param(b"config: !!python/object/apply:os.system ['true']\n", "not valid YAML", id="python-tag"),
    pytest.param(b"# padding\n" * 110_000, "larger than 1024 KiB", id="too-large"),
    pytest.param(
        config_with("        seed: " + "9" * 5000 + "\n        prompts: [a cat]\n"), "number too long", id="huge-int"
    ),
    pytest.param(
        config_with("        seed: " + "9" * 400 + "\n        prompts: [a cat]\n"), "must be a number", id="no-float"
    ),
]


@pytest.mark.django_db
@pytest.mark.parametrize("data, message", NOT_A_TRAINING_CONFIG)
def test_what_is_not_a_usable_training_config_is_refused_by_name(api, data, message):
    error = import_config(api, data, status=400)["error"]
    assert error["code"] == "INVALID_TRAINING_CONFIG"
    assert message in error["message"]
    assert not PromptSet.objects.exists()


@pytest.mark.django_db
def test_a_refused_setting_names_its_place_in_the_config(api):
    data = config_with(
        "        samples:\n          - prompt: a cat\n          - prompt: a dog\n            width: 9000\n"
    )
    error = import_config(api, data, status=400)["error"]
    assert error["message"] == "Prompt 2: width: Ensure this value is less than or equal to 4096."
    assert error["details"] == {
        "sample.samples[1].width": [
            {"code": "max_value", "message": "Ensure this value is less than or equal to 4096."}
        ]
    }


@pytest.mark.django_db
def test_more_prompts_than_a_job_may_have_are_refused(api, settings):
    settings.JOB_MAX_PROMPTS = 2
    error = import_config(api, FLAGS, status=400)["error"]
    assert error["code"] == "TOO_MANY_PROMPTS" and "at most 2 prompts; this config has 3" in error["message"]
    assert not PromptSet.objects.exists()


@pytest.mark.django_db
def test_import_needs_a_file_and_a_signed_in_user(api, alice):
    response = api.post(URL, {"name": "x"}, format="multipart")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "VALIDATION_ERROR")
    assert "config" in response.json()["error"]["details"]
    assert APIClient().post(URL, {"config": upload(FLAGS)}, format="multipart").status_code == 401


@pytest.mark.django_db
def test_reimport_after_more_training_replaces_the_items_of_the_same_set(api, api_of, django_user_model):
    first = import_config(api, FLAGS)
    retrained = config_with('        seed: 5\n        prompts:\n          - "[trigger] at night"\n', trigger="sks2")
    again = import_config(api, retrained)
    assert again["id"] == first["id"] and PromptSet.objects.count() == 1
    assert again["trigger_word"] == "sks2"
    assert again["items"] == [
        {
            "prompt": "[trigger] at night",
            "width": 512,
            "height": 512,
            "num_frames": 1,
            "fps": 16,
            "guidance_scale": 7.0,
            "sample_steps": 20,
            "seed": 5,
        }
    ]
    assert "--gr" not in again["notes"]
    assert "ai-toolkit's defaults fill what the config leaves out: width 512, height 512" in again["notes"]

    # another member importing the same run gets a set of their own
    bob = api_of(django_user_model.objects.create_user("bob", password="pw-bob-123"))
    theirs = import_config(bob, FLAGS)
    assert theirs["id"] != first["id"] and (theirs["owner"], len(theirs["items"])) == ("bob", 3)
    assert len(api.get(f"/api/v1/prompt-sets/{first['id']}/").json()["items"]) == 1


@pytest.mark.django_db
def test_schema_types_the_import_as_a_multipart_file_upload(client):
    operation = client.get("/api/schema/?format=json").json()["paths"][URL]["post"]
    body = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["$ref"].endswith("/PromptSetImport")
    schema = client.get("/api/schema/?format=json").json()["components"]["schemas"]
    assert schema["PromptSetImport"]["properties"]["config"]["type"] == "string"  # a file, as the LoRA upload's
    assert schema["PromptSetImport"]["required"] == ["config"]
    assert operation["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith("/PromptSet")
    assert schema["PromptSet"]["properties"]["notes"]["readOnly"] is True


# --- the page ---------------------------------------------------------------------------------------------------


def client_of(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_import_from_the_list_page_opens_the_set_with_its_notes(alice, django_user_model):
    client = client_of(alice)
    assert "Import from ai-toolkit config" in client.get("/prompt-sets/").content.decode()
    response = client.post("/prompt-sets/", {"config": upload(UPSTREAM_WAN21_14B), "name": ""}, follow=True)
    prompt_set = PromptSet.objects.get()
    assert response.redirect_chain == [(f"/prompt-sets/{prompt_set.pk}/", 302)]
    html = response.content.decode()
    assert "Imported 1 prompt into my_first_wan21_14b_lora_v1." in html
    assert "num_frames 40 -&gt; 41 (Wan needs 4k+1)." in html
    assert UPSTREAM_PROMPT in html and 'value="p3r5on"' in html

    # a colleague reads the set, notes included
    colleague = django_user_model.objects.create_user("bob", password="pw-bob-123")
    html = client_of(colleague).get(f"/prompt-sets/{prompt_set.pk}/").content.decode()
    assert "Only its owner or staff may change it." in html
    assert "Imported from the ai-toolkit config of run my_first_wan21_14b_lora_v1." in html


@pytest.mark.django_db
def test_a_bad_file_on_the_page_shows_its_code_and_message(alice):
    response = client_of(alice).post("/prompt-sets/", {"config": upload(b"config: [unclosed\n")})
    assert response.status_code == 400
    html = response.content.decode()
    assert "INVALID_TRAINING_CONFIG" in html and "not valid YAML" in html
    assert not PromptSet.objects.exists()


@needs_chromium
def test_import_in_the_browser_and_read_the_notes(browser, live_server, transactional_db, django_user_model, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def import_file(path, expect: str):
        browser.find_element(By.NAME, "config").send_keys(str(path))
        browser.find_element(By.XPATH, "//button[normalize-space()='Import']").click()
        WebDriverWait(browser, 20).until(lambda d: expect in d.execute_script("return document.body.innerText"))

    django_user_model.objects.create_user("maria", password="pw-maria-123")
    sign_in(browser, live_server.url, "maria", "pw-maria-123")
    browser.get(f"{live_server.url}/prompt-sets/")
    not_a_config = tmp_path / "notes.yaml"
    not_a_config.write_text("shopping:\n  - milk\n")
    import_file(not_a_config, "INVALID_TRAINING_CONFIG")
    assert "no config section" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    screenshot(browser, "prompt-set-import")

    import_file(SAMPLES_FORM, "Imported 3 prompts")
    prompt_set = PromptSet.objects.get()
    assert browser.current_url == f"{live_server.url}/prompt-sets/{prompt_set.pk}/"
    notes = browser.find_element(By.CSS_SELECTOR, ".set-notes").text
    assert "The previews used the LoRA at 0.8" in notes and "num_frames 50 -> 49 for prompt 3" in notes
    prompts = [e.get_attribute("value") for e in browser.find_elements(By.CSS_SELECTOR, "textarea[name$='-prompt']")]
    assert prompts[0] == "[trigger] walking on a beach at sunset" and len(prompts) == 3
    screenshot(browser, "prompt-set-imported")


@pytest.mark.django_db
def test_an_import_never_overwrites_a_set_written_by_hand(api, alice):
    mine = api.post(
        "/api/v1/prompt-sets/",
        {"name": "flags_run", "items": [{"prompt": "a cat"}]},
        format="json",
    )
    assert mine.status_code == 201, mine.json()
    imported = import_config(api, FLAGS)
    assert imported["name"] == "flags_run (2)" and len(imported["items"]) == 3
    again = import_config(api, config_with('        prompts:\n          - "[trigger] at night"\n'))
    assert (again["id"], again["name"], len(again["items"])) == (imported["id"], "flags_run (2)", 1)

    hand = PromptSet.objects.get(pk=mine.json()["id"])
    assert (hand.trigger_word, [item.prompt for item in hand.items.all()]) == ("", ["a cat"])
    assert sorted(PromptSet.objects.values_list("name", flat=True)) == ["flags_run", "flags_run (2)"]
