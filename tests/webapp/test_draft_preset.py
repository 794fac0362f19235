"""The draft preset at submit: the server's step-distill LoRA (DRAFT_LORA) after the job's own LoRAs, 4 steps
where a prompt names none, guidance 1, the distill scheduler; refused with DRAFT_NOT_CONFIGURED where the
server has none, through every door; a re-run reproduces the job without adding the LoRA twice."""

import re
from html.parser import HTMLParser

import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from tests.conftest import TINY_SHAPE
from tests.webapp.test_jobs_api import SMALL, submit
from webapp.jobs.models import GenerationJob
from webapp.loras.models import Lora
from webapp.loras.services import lora_resolve
from webapp.prompts.services import prompt_set_create
from workers.pipeline.checkpoints import write_kohya_lora
from workers.pipeline.params import DEFAULTS, DRAFT_STEPS

pytestmark = pytest.mark.django_db
DRAFT_PATH = "lightx2v/distill_tiny.safetensors"
DRAFT_NAME = "lightx2v/distill_tiny"
MINIMAL = {"model": "wan21_14b", "loras": [], "prompts": [{"prompt": "a cat", **SMALL}]}


@pytest.fixture(scope="session")
def draft_lora_file():
    """A tiny step-distill LoRA in the format LightX2V ships (kohya keys, alpha, diff_b, norm diffs) under LORA_ROOT."""
    return write_kohya_lora(django_settings.LORA_ROOT / DRAFT_PATH, shape=TINY_SHAPE, seed=21, scale=0.1)


@pytest.fixture
def draft(settings, draft_lora_file):
    settings.DRAFT_LORA, settings.DRAFT_LORA_MULTIPLIER = DRAFT_PATH, 0.9
    return settings


def stack(job) -> list[tuple[str, float]]:
    return [(item["name"], item["multiplier"]) for item in job["loras"]]


def test_a_draft_job_stacks_the_draft_lora_last_at_4_steps_without_cfg(api, draft):
    prompts = [{"prompt": "a cat", **SMALL, "sample_steps": None, "guidance_scale": 5.0}, {"prompt": "a dog"}]
    body = {"loras": [{"lora": "job_a/job_a.safetensors", "multiplier": 0.5}], "prompts": prompts, "preset": "draft"}
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    job = response.json()
    assert (job["preset"], job["scheduler"]) == ("draft", "distill")
    assert stack(job) == [("job_a/job_a", 0.5), (DRAFT_NAME, 0.9)]
    assert [(p["sample_steps"], p["guidance_scale"]) for p in job["prompts"]] == [(4, 1.0), (4, 1.0)]
    assert job["progress"]["steps"] == 4
    assert Lora.objects.get(name=DRAFT_NAME).key_format == "kohya"


def test_a_prompts_own_steps_stay_and_guidance_is_1_whatever_it_says(api, draft):
    prompts = [{"prompt": "a cat --cfg 6", **SMALL, "sample_steps": 6}, {"prompt": "a dog --steps 8 --cfg 3"}]
    body = {"prompts": prompts, "preset": "draft", "prompt_semantics": "ai-toolkit", "loras": []}
    job = api.post("/api/v1/jobs/", body, format="json").json()
    assert [(p["sample_steps"], p["guidance_scale"]) for p in job["prompts"]] == [(6, 1.0), (8, 1.0)]
    assert [p["prompt"] for p in job["prompts"]] == ["a cat", "a dog"]


def test_the_v1_inference_api_takes_the_preset(api, draft):
    response = api.post("/v1/inference", {**MINIMAL, "preset": "draft"}, format="json")
    assert response.status_code == 200, response.json()
    job = api.get(f"/api/v1/jobs/{response.json()['request_id']}/").json()
    assert (job["preset"], job["scheduler"], stack(job)) == ("draft", "distill", [(DRAFT_NAME, 0.9)])
    assert (job["prompts"][0]["sample_steps"], job["prompts"][0]["guidance_scale"]) == (2, 1.0)  # its own steps


def test_draft_and_fast_combine(api, draft):
    job = submit(api, preset="draft", speed="fast")
    assert (job["preset"], job["speed"], job["scheduler"]) == ("draft", "fast", "distill")


@pytest.mark.parametrize("configured", ["", "no_such_job/distill.safetensors"])
def test_a_server_without_a_draft_lora_refuses_draft_through_both_apis(api, settings, configured):
    settings.DRAFT_LORA = configured
    refused = api.post("/api/v1/jobs/", {"prompts": [{"prompt": "a cat"}], "preset": "draft"}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "DRAFT_NOT_CONFIGURED"
    assert "DRAFT_LORA" in refused.json()["error"]["message"]
    compat = api.post("/v1/inference", {**MINIMAL, "preset": "draft"}, format="json")
    assert compat.status_code == 400 and compat.json()["error"]["code"] == "DRAFT_NOT_CONFIGURED"
    assert not GenerationJob.objects.exists()
    assert submit(api, preset="standard")["preset"] == "standard"  # the standard preset needs nothing


def test_naming_the_draft_lora_yourself_in_a_draft_job_is_a_duplicate(api, draft):
    body = {"loras": [{"lora": DRAFT_PATH}], "prompts": [{"prompt": "a cat"}], "preset": "draft"}
    refused = api.post("/api/v1/jobs/", body, format="json")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "LORA_DUPLICATE"


def test_a_rerun_reproduces_the_stack_and_steps_without_adding_the_lora_twice(api, draft):
    first = submit(api, loras=[{"lora": "job_b/job_b.safetensors", "multiplier": 0.7}], preset="draft")
    draft.DRAFT_LORA = ""  # reproducing a stored job needs no draft LoRA configured
    rerun = api.post(f"/api/v1/jobs/{first['id']}/rerun/")
    assert rerun.status_code == 201, rerun.json()
    again = rerun.json()
    assert stack(again) == stack(first) == [("job_b/job_b", 0.7), (DRAFT_NAME, 0.9)]
    assert again["prompts"] == first["prompts"]
    assert (again["preset"], again["scheduler"]) == ("draft", "distill")


def test_an_unknown_preset_is_a_validation_error(api):
    refused = api.post("/api/v1/jobs/", {"prompts": [{"prompt": "a cat"}], "preset": "turbo"}, format="json")
    assert refused.status_code == 400 and "preset" in refused.json()["error"]["details"]


# -- the submit page and the admin ------------------------------------------------------------------------


@pytest.fixture
def member(user, tiny_model, lora_files):
    client = Client()
    client.force_login(user)
    return client


def page_form(**fields) -> dict:
    return {"prompt_rows": "3", "scheduler": "auto", "speed": "exact", "priority": "0", **fields}


def test_the_submit_page_offers_the_preset_and_says_what_draft_does(member, draft):
    page = member.get("/jobs/new/").content.decode()
    assert '<select name="preset"' in page and '<option value="draft"' in page
    assert "4 steps without CFG" in page


def test_the_submit_page_says_when_draft_is_not_set_up(member, settings):
    settings.DRAFT_LORA = ""
    assert "draft: not set up on this server" in member.get("/jobs/new/").content.decode()
    response = member.post("/jobs/new/", page_form(**{"prompt-0-prompt": "a cat", "preset": "draft"}))
    assert response.status_code == 400 and "DRAFT_NOT_CONFIGURED" in response.content.decode()
    assert not GenerationJob.objects.exists()


def selected_loras(page: str) -> list[int]:
    """The LoRA picked in each LoRA row of the submit page."""
    return [
        int(pk)
        for pk in re.findall(r'<option value="(\d+)" data-multiplier="[^"]*" data-trigger="[^"]*" selected>', page)
    ]


def test_a_draft_job_submitted_and_submitted_again_from_the_page(member, draft, lora_files):
    a = lora_resolve(ref="job_a/job_a.safetensors")
    fields = {"prompt-0-prompt": "a cat", "prompt-0-width": "128", "lora-0-lora": str(a.pk), "preset": "draft"}
    response = member.post("/jobs/new/", page_form(**fields))
    job = GenerationJob.objects.get()
    assert response.status_code == 302 and (job.preset, job.scheduler) == ("draft", "distill")
    assert [jl.name for jl in job.job_loras.all()] == ["job_a/job_a", DRAFT_NAME]
    # "render again": the form holds the job's own LoRAs and the draft preset, which adds its LoRA itself
    prefilled = member.get(f"/jobs/new/?from={job.pk}").content.decode()
    assert selected_loras(prefilled) == [a.pk]
    assert '<option value="draft" selected>' in prefilled
    again = member.post("/jobs/new/", page_form(**{**fields, "prompt-0-sample_steps": "4"}))
    assert again.status_code == 302
    rerendered = GenerationJob.objects.exclude(pk=job.pk).get()
    assert [jl.name for jl in rerendered.job_loras.all()] == ["job_a/job_a", DRAFT_NAME]


def test_the_admin_submits_a_draft_job(client, django_user_model, draft, tiny_model, lora_files):
    staff = django_user_model.objects.create_superuser("root", password="pw-root-123")
    client.force_login(staff)
    prompt_set = prompt_set_create(name="one", items=[{"prompt": "a cat", **SMALL}], owner=staff)
    form = {"prompt_set": prompt_set.pk, "scheduler": "auto", "priority": "0", "speed": "exact"}
    response = client.post(
        "/admin/jobs/generationjob/add/", {**form, "prompt_semantics": "reference", "preset": "draft"}
    )
    assert response.status_code == 302, response.content[:2000]
    job = GenerationJob.objects.get()
    assert (job.preset, job.scheduler, job.prompts[0]["guidance_scale"]) == ("draft", "distill", 1.0)
    assert [jl.name for jl in job.job_loras.all()] == [DRAFT_NAME]


class ShownForm(HTMLParser):
    """What a browser submits from the submit page as shown: inputs' values, each select's selected option,
    checked boxes, textareas' text."""

    def __init__(self, page: str):
        super().__init__()
        self.data, self._select, self._textarea = {}, None, None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input" and attrs.get("name") and attrs.get("type") != "checkbox":
            self.data[attrs["name"]] = attrs.get("value") or ""
        elif tag == "input" and attrs.get("name") and "checked" in attrs:
            self.data.setdefault(attrs["name"], []).append(attrs["value"])
        elif tag == "select":
            self._select = attrs["name"]
        elif tag == "option" and self._select and ("selected" in attrs or self._select not in self.data):
            self.data[self._select] = attrs["value"]  # the first option unless one is selected
        elif tag == "textarea":
            self._textarea = attrs["name"]
            self.data[self._textarea] = ""

    def handle_endtag(self, tag):
        if tag in ("select", "textarea"):
            self._select = self._textarea = None

    def handle_data(self, data):
        if self._textarea:
            self.data[self._textarea] += data.removeprefix("\n")


def steps_and_guidance(job) -> list[tuple[int, float]]:
    return [(p["sample_steps"], p["guidance_scale"]) for p in job.prompts]


def test_a_draft_edited_and_switched_to_standard_renders_at_the_standard_settings(member, draft, lora_files):
    a = lora_resolve(ref="job_a/job_a.safetensors")
    fields = {"prompt-0-prompt": "a cat", "prompt-1-prompt": "a dog", "prompt-1-sample_steps": "6"}
    member.post("/jobs/new/", page_form(**fields, **{"lora-0-lora": str(a.pk), "preset": "draft"}))
    job = GenerationJob.objects.get()
    assert (job.scheduler, steps_and_guidance(job)) == ("distill", [(DRAFT_STEPS, 1.0), (6, 1.0)])
    shown = ShownForm(member.get(f"/jobs/new/?from={job.pk}").content.decode()).data
    assert (shown["preset"], shown["scheduler"], shown["lora-0-lora"]) == ("draft", "auto", str(a.pk))
    assert [shown[f"prompt-{i}-sample_steps"] for i in (0, 1)] == ["", "6"]  # the draft's 4 not, the prompt's own 6
    assert [shown[f"prompt-{i}-guidance_scale"] for i in (0, 1)] == ["", ""]

    assert member.post("/jobs/new/", {**shown, "preset": "standard"}).status_code == 302
    standard = GenerationJob.objects.get(preset="standard")
    assert standard.scheduler == "auto" and [jl.name for jl in standard.job_loras.all()] == ["job_a/job_a"]
    defaults = (DEFAULTS["sample_steps"], DEFAULTS["guidance_scale"])
    assert steps_and_guidance(standard) == [defaults, (6, DEFAULTS["guidance_scale"])]

    assert member.post("/jobs/new/", shown).status_code == 302  # kept as a draft: the draft again
    again = GenerationJob.objects.filter(preset="draft").exclude(pk=job.pk).get()
    assert (again.scheduler, steps_and_guidance(again)) == ("distill", steps_and_guidance(job))
    assert [jl.name for jl in again.job_loras.all()] == ["job_a/job_a", DRAFT_NAME]


def test_a_draft_keeps_the_scheduler_its_request_named_for_a_switch_to_standard(member, draft):
    member.post("/jobs/new/", page_form(**{"prompt-0-prompt": "a cat", "preset": "draft", "scheduler": "unipc"}))
    job = GenerationJob.objects.get()
    assert job.scheduler == "distill"
    assert ShownForm(member.get(f"/jobs/new/?from={job.pk}").content.decode()).data["scheduler"] == "unipc"


def test_a_standard_job_edited_and_switched_to_draft_runs_draft_steps(member, draft):
    fields = {"prompt-0-prompt": "a cat", "prompt-1-prompt": "a dog", "prompt-1-sample_steps": "8"}
    member.post("/jobs/new/", page_form(**fields))
    job = GenerationJob.objects.get()
    assert [p["sample_steps"] for p in job.prompts] == [DEFAULTS["sample_steps"], 8]
    shown = ShownForm(member.get(f"/jobs/new/?from={job.pk}").content.decode()).data
    assert [shown[f"prompt-{i}-sample_steps"] for i in (0, 1)] == ["", "8"]  # the default is not carried
    assert member.post("/jobs/new/", {**shown, "preset": "draft"}).status_code == 302
    drafted = GenerationJob.objects.get(preset="draft")
    assert steps_and_guidance(drafted) == [(DRAFT_STEPS, 1.0), (8, 1.0)]  # the typed 8 stays, as the form says
    page = member.get(f"/jobs/{drafted.pk}/").content.decode()
    assert f"<dt>preset</dt><dd>draft ({DRAFT_STEPS}, 8 steps, no CFG)</dd>" in page


AITOOLKIT_CONFIG = b"""\
job: extension
config:
  name: "beach_run"
  process:
    - type: sd_trainer
      trigger_word: "sks"
      sample:
        width: 128
        height: 128
        num_frames: 9
        prompts:
          - "[trigger] on a beach"
          - "[trigger] in the snow"
"""


def test_a_draft_from_an_imported_prompt_set_runs_draft_steps_and_its_page_says_so(api, member, draft):
    upload = SimpleUploadedFile("config.yaml", AITOOLKIT_CONFIG, content_type="application/x-yaml")
    imported = api.post("/api/v1/prompt-sets/import/", {"config": upload}, format="multipart")
    assert imported.status_code == 201, imported.json()
    assert [item["sample_steps"] for item in imported.json()["items"]] == [20, 20]  # ai-toolkit's preview steps
    body = {"prompt_set": imported.json()["id"], "preset": "draft", "loras": []}
    job = api.post("/api/v1/jobs/", body, format="json").json()
    assert [(p["sample_steps"], p["guidance_scale"]) for p in job["prompts"]] == [(DRAFT_STEPS, 1.0)] * 2
    assert job["progress"]["steps"] == DRAFT_STEPS
    page = member.get(f"/jobs/{job['id']}/").content.decode()
    assert f"<dt>preset</dt><dd>draft ({DRAFT_STEPS} steps, no CFG)</dd>" in page
    standard = api.post("/api/v1/jobs/", {**body, "preset": "standard"}, format="json").json()
    assert [p["sample_steps"] for p in standard["prompts"]] == [20, 20]  # the set's own steps, as its previews
    axes = [{"field": "seed", "values": [1, 2]}]
    sweep = api.post("/api/v1/sweeps/", {"name": "draft", **body, "axes": axes}, format="json")
    assert sweep.status_code == 201, sweep.json()
    cells = GenerationJob.objects.filter(sweep_id=sweep.json()["id"])
    assert {p["sample_steps"] for cell in cells for p in cell.prompts} == {DRAFT_STEPS}  # a draft sweep too


def test_the_job_page_shows_the_steps_a_draft_ran(api, member, draft):
    prompts = [{"prompt": "a cat", **SMALL, "sample_steps": None}, {"prompt": "a dog", **SMALL, "sample_steps": 25}]
    job = api.post("/api/v1/jobs/", {"prompts": prompts, "preset": "draft", "loras": []}, format="json").json()
    assert [p["sample_steps"] for p in job["prompts"]] == [DRAFT_STEPS, 25]  # the API prompt named 25: it stays
    page = member.get(f"/jobs/{job['id']}/").content.decode()
    assert f"<dt>preset</dt><dd>draft ({DRAFT_STEPS}, 25 steps, no CFG)</dd>" in page
