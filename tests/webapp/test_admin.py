"""Admin pages render for staff, and a job can be submitted from the admin."""
import pytest

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
    PromptItem.objects.create(prompt_set=prompt_set, prompt="[trigger] on a beach", width=128, height=128,
                              num_frames=9, sample_steps=2)
    return prompt_set


def test_admin_pages_render(staff_client, prompt_set):
    lora = lora_resolve(ref="job_a/job_a.safetensors")
    for url in ["/admin/", "/admin/loras/lora/", "/admin/loras/lora/add/", f"/admin/loras/lora/{lora.pk}/change/",
                "/admin/prompts/promptset/", f"/admin/prompts/promptset/{prompt_set.pk}/change/",
                "/admin/jobs/generationjob/", "/admin/jobs/generationjob/add/", "/"]:
        assert staff_client.get(url).status_code == 200, url
    assert b"rank" in staff_client.get(f"/admin/loras/lora/{lora.pk}/change/").content


def test_submit_job_from_admin(staff_client, prompt_set):
    lora = lora_resolve(ref="job_a/job_a.safetensors")
    response = staff_client.post("/admin/jobs/generationjob/add/", {
        "prompt_set": prompt_set.pk, "loras": [lora.pk], "multiplier": "0.5", "scheduler": "auto", "priority": "3",
        "speed": "fast", "prompt_semantics": "reference"})
    assert response.status_code == 302, response.content[:2000]
    job = GenerationJob.objects.get()
    assert job.prompts[0]["prompt"] == "sks on a beach"
    assert [(jl.lora_id, jl.multiplier) for jl in job.job_loras.all()] == [(lora.pk, 0.5)]
    assert job.speed == "fast"
    page = staff_client.get(f"/admin/jobs/generationjob/{job.pk}/change/")
    assert page.status_code == 200 and b"sks on a beach" in page.content
    staff_client.post("/admin/jobs/generationjob/", {"action": "cancel_jobs", "_selected_action": [job.pk]})
    job.refresh_from_db()
    assert job.status == "canceled"


def test_admin_refuses_an_empty_prompt_set_with_a_form_error(staff_client):
    empty = PromptSet.objects.create(name="empty")
    response = staff_client.post("/admin/jobs/generationjob/add/", {
        "prompt_set": empty.pk, "multiplier": "1.0", "scheduler": "auto", "priority": "0",
        "prompt_semantics": "reference"})
    assert response.status_code == 200 and b"This prompt set has no prompts." in response.content
    assert GenerationJob.objects.count() == 0


def test_team_members_sign_in_to_the_queue_page(client, django_user_model, prompt_set):
    django_user_model.objects.create_user("member", password="pw-member-123")
    assert client.get("/").status_code == 302
    response = client.post("/accounts/login/", {"username": "member", "password": "pw-member-123"}, follow=True)
    assert response.status_code == 200 and b"Render queue" in response.content and b"member" in response.content
