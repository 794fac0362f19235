"""Admin pages render for staff, and a job can be submitted from the admin."""

import pytest

from tests.webapp.conftest import ramp_output
from webapp.jobs.models import GenerationJob
from webapp.loras.services import lora_resolve
from webapp.prompts.models import PromptItem, PromptSet

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model, tiny_model, lora_files):
    admin = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")
    client.force_login(admin)
    return client


@pytest.fixture
def prompt_set():
    prompt_set = PromptSet.objects.create(name="beach", trigger_word="sks")
    PromptItem.objects.create(
        prompt_set=prompt_set, prompt="[trigger] on a beach", width=128, height=128, num_frames=9, sample_steps=2
    )
    return prompt_set


def test_admin_pages_render(staff_client, prompt_set):
    lora = lora_resolve(ref="job_a/job_a.safetensors")
    for url in [
        "/admin/",
        "/admin/loras/lora/",
        "/admin/loras/lora/add/",
        f"/admin/loras/lora/{lora.pk}/change/",
        "/admin/prompts/promptset/",
        f"/admin/prompts/promptset/{prompt_set.pk}/change/",
        "/admin/jobs/generationjob/",
        "/admin/jobs/generationjob/add/",
        "/",
    ]:
        assert staff_client.get(url).status_code == 200, url
    assert b"rank" in staff_client.get(f"/admin/loras/lora/{lora.pk}/change/").content


def _add_form(prompt_set, **fields):
    return {
        "prompt_set": prompt_set.pk,
        "scheduler": "auto",
        "priority": "0",
        "speed": "exact",
        "prompt_semantics": "reference",
        **fields,
    }


def test_submit_job_from_admin(staff_client, prompt_set):
    lora = lora_resolve(ref="job_a/job_a.safetensors")
    response = staff_client.post(
        "/admin/jobs/generationjob/add/",
        _add_form(prompt_set, lora_1=lora.pk, multiplier_1="0.5", priority="3", speed="fast"),
    )
    assert response.status_code == 302, response.content[:2000]
    job = GenerationJob.objects.get()
    assert job.prompts[0]["prompt"] == "sks on a beach"
    assert [(jl.lora_id, jl.multiplier) for jl in job.job_loras.all()] == [(lora.pk, 0.5)]
    assert job.speed == "fast" and job.priority == 3
    page = staff_client.get(f"/admin/jobs/generationjob/{job.pk}/change/")
    assert page.status_code == 200 and b"sks on a beach" in page.content
    staff_client.post("/admin/jobs/generationjob/", {"action": "cancel_jobs", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert job.status == "canceled"


def test_admin_stacks_two_loras_each_with_its_own_multiplier(staff_client, prompt_set):
    a, b = lora_resolve(ref="job_a/job_a.safetensors"), lora_resolve(ref="job_b/job_b.safetensors")
    response = staff_client.post(
        "/admin/jobs/generationjob/add/",
        _add_form(prompt_set, lora_1=a.pk, multiplier_1="0.6", lora_2=b.pk, multiplier_2="1.2"),
    )
    assert response.status_code == 302, response.content[:2000]
    job = GenerationJob.objects.get()
    assert [(jl.lora_id, jl.multiplier) for jl in job.job_loras.all()] == [(a.pk, 0.6), (b.pk, 1.2)]


def test_an_empty_multiplier_takes_the_loras_default(staff_client, prompt_set):
    lora = lora_resolve(ref="job_a/job_a.safetensors")
    lora.default_multiplier = 0.8
    lora.save()
    response = staff_client.post("/admin/jobs/generationjob/add/", _add_form(prompt_set, lora_2=lora.pk))
    assert response.status_code == 302, response.content[:2000]
    assert [jl.multiplier for jl in GenerationJob.objects.get().job_loras.all()] == [0.8]


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"lora_1": "A", "lora_2": "A"}, b"already in the stack"),
        ({"multiplier_1": "0.5"}, b"Choose the LoRA this multiplier is for."),
        ({"lora_1": "A", "multiplier_1": "7"}, b"Ensure this value is less than or equal to 2"),
        ({"speed": "fast", "step_cache": "0.1"}, b"cannot be combined"),
        ({"step_cache": "3"}, b"less than or equal to 1"),
    ],
)
def test_admin_form_errors_are_form_errors(staff_client, prompt_set, fields, error):
    lora = lora_resolve(ref="job_a/job_a.safetensors")
    fields = {key: lora.pk if value == "A" else value for key, value in fields.items()}
    response = staff_client.post("/admin/jobs/generationjob/add/", _add_form(prompt_set, **fields))
    assert response.status_code == 200 and error in response.content, response.content[-3000:]
    assert b"errornote" in response.content
    assert GenerationJob.objects.count() == 0


def test_a_bad_inline_flag_is_a_form_error(staff_client, prompt_set):
    PromptItem.objects.create(prompt_set=prompt_set, prompt="a dog --w wide", position=1)
    response = staff_client.post("/admin/jobs/generationjob/add/", _add_form(prompt_set, prompt_semantics="ai-toolkit"))
    assert response.status_code == 200 and b"INVALID_PROMPT_FLAG" in response.content
    assert GenerationJob.objects.count() == 0


def test_a_refused_submit_is_a_message_not_a_500(staff_client, prompt_set, monkeypatch):
    from webapp.core.errors import ApiError
    from webapp.jobs import admin as jobs_admin

    def refuse(**kwargs):
        raise ApiError("TOO_MANY_QUEUED_JOBS", "You have 20 jobs waiting.", status_code=429)

    monkeypatch.setattr(jobs_admin, "job_submit", refuse)
    response = staff_client.post("/admin/jobs/generationjob/add/", _add_form(prompt_set), follow=True)
    assert response.status_code == 200 and b"TOO_MANY_QUEUED_JOBS: You have 20 jobs waiting." in response.content
    assert response.redirect_chain[-1][0].endswith("/admin/jobs/generationjob/add/")
    assert GenerationJob.objects.count() == 0


def test_admin_refuses_an_empty_prompt_set_with_a_form_error(staff_client):
    empty = PromptSet.objects.create(name="empty")
    response = staff_client.post("/admin/jobs/generationjob/add/", _add_form(empty))
    assert response.status_code == 200 and b"This prompt set has no prompts." in response.content
    assert GenerationJob.objects.count() == 0


def test_job_pages_are_readable(staff_client, prompt_set, tmp_path):
    a, b = lora_resolve(ref="job_a/job_a.safetensors"), lora_resolve(ref="job_b/job_b.safetensors")
    staff_client.post(
        "/admin/jobs/generationjob/add/",
        _add_form(prompt_set, lora_1=a.pk, multiplier_1="0.5", lora_2=b.pk, multiplier_2="1.2"),
    )
    job = GenerationJob.objects.get()
    job.status, job.progress = "running", {"prompt": 0, "prompts": 2, "step": 3, "steps": 25, "fraction": 0.4}
    job.timings = {"load": 12.345, "prompts": [{"denoise": 31.4159, "vae_decode": 1.23456, "save": 0.01}]}
    job.save()
    ramp_output(
        job,
        tmp_path,
        record={
            "prompt": "<b>sks</b> on a beach",
            "seed": 42,
            "loras": [{"name": "job_a", "sha256": a.sha256, "multiplier": 0.5}],
            "software": {"python": "3.12", "torch": "2.7"},
        },
    )
    page = staff_client.get(f"/admin/jobs/generationjob/{job.pk}/change/").content.decode()
    assert "object (" not in page
    assert "prompt 1/2 · step 3/25 (40%)" in page
    assert f"{a.name} @ 0.5" in page and "Output 1: 192x128, 17 frames, seed 42" in page
    assert "12.3" in page and "31.4" in page and "1.23" in page and "31.4159" not in page
    assert "<details" in page and "&lt;b&gt;sks&lt;/b&gt; on a beach" in page and "<b>sks</b>" not in page
    listing = staff_client.get("/admin/jobs/generationjob/").content.decode()
    assert str(job.id)[:8] in listing and f'title="{job.id}"' in listing and f"{b.name}@1.2" in listing
    assert "40%" in listing


def test_lora_and_prompt_set_pages_are_readable(staff_client, prompt_set):
    lora = lora_resolve(ref="job_a/job_a.safetensors")
    page = staff_client.get(f"/admin/loras/lora/{lora.pk}/change/").content.decode()
    assert "Trained with" in page and "ai-toolkit 0.9.4" in page and "<details" in page
    assert " KB" in page or " MB" in page or " bytes" in page
    assert '"key_format"' not in page.split("<details")[0]  # the JSON only inside <details>
    page = staff_client.get(f"/admin/prompts/promptset/{prompt_set.pk}/change/").content.decode()
    assert 'placeholder="1024"' in page and 'placeholder="25"' in page and "object (" not in page
    response = staff_client.post(
        f"/admin/prompts/promptset/{prompt_set.pk}/change/",
        {
            "name": "beach",
            "trigger_word": "sks",
            "items-TOTAL_FORMS": "2",
            "items-INITIAL_FORMS": "1",
            "items-MIN_NUM_FORMS": "0",
            "items-MAX_NUM_FORMS": "1000",
            "items-0-id": prompt_set.items.get().pk,
            "items-0-prompt_set": prompt_set.pk,
            "items-0-position": "0",
            "items-0-prompt": "[trigger] on a beach",
            "items-0-width": "128",
            "items-0-height": "128",
            "items-0-num_frames": "9",
            "items-0-sample_steps": "2",
            "items-1-prompt_set": prompt_set.pk,
            "items-1-position": "1",
            "items-1-prompt": "a second prompt",
            "items-1-guidance_scale": "5.5",
        },
    )
    assert response.status_code == 302, response.content[-3000:]
    assert [(i.prompt, i.guidance_scale) for i in prompt_set.items.all()] == [
        ("[trigger] on a beach", None),
        ("a second prompt", 5.5),
    ]


def test_team_members_sign_in_to_the_queue_page(client, django_user_model, prompt_set):
    django_user_model.objects.create_user("member", password="pw-member-123")
    assert client.get("/").status_code == 302
    response = client.post("/accounts/login/", {"username": "member", "password": "pw-member-123"}, follow=True)
    assert response.status_code == 200 and b"Render queue" in response.content and b"member" in response.content
