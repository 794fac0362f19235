"""The admin pages in a real browser (headless Chromium, 1400x1000): what staff see, kept as screenshots under
var/.../screenshots/admin-*.png."""

import pytest

from tests.webapp.browser import needs_chromium, screenshot, sign_in, video_facts
from tests.webapp.conftest import RAMP, ramp_output
from webapp.jobs.models import GenerationJob, JobLora
from webapp.loras.services import lora_resolve
from webapp.prompts.models import PromptItem, PromptSet

pytestmark = needs_chromium


@pytest.fixture
def admin_data(transactional_db, django_user_model, tmp_path, tiny_model, lora_files):
    """A staff user, two LoRAs, a prompt set, a finished job with a real MP4 and a running one."""
    staff = django_user_model.objects.create_user("keeper", password="pw-keeper-123", is_staff=True, is_superuser=True)
    a, b = lora_resolve(ref="job_a/job_a.safetensors"), lora_resolve(ref="job_b/job_b.safetensors")
    prompt_set = PromptSet.objects.create(name="beach walks", owner=staff, trigger_word="sks")
    PromptItem.objects.create(
        prompt_set=prompt_set,
        position=0,
        prompt="[trigger] walking on a beach at sunset",
        width=192,
        height=128,
        num_frames=17,
    )
    PromptItem.objects.create(prompt_set=prompt_set, position=1, prompt="[trigger] waving", neg="blurry")
    prompts = [RAMP]
    done = GenerationJob.objects.create(
        owner=staff,
        status="succeeded",
        prompt_set=prompt_set,
        prompts=prompts,
        progress={"prompt": 0, "prompts": 1, "step": 4, "steps": 4, "fraction": 1.0},
        timings={
            "load": 41.237,
            "prompts": [
                {
                    "lora_switch": 0.0312,
                    "text_encode": 0.412,
                    "denoise": 12.3456,
                    "denoise_per_step": 3.0864,
                    "vae_decode": 1.5,
                    "mp4_encode": 0.2,
                    "save": 0.05,
                }
            ],
        },
    )
    for i, (lora, multiplier) in enumerate([(a, 0.6), (b, 1.2)]):
        JobLora.objects.create(
            job=done, lora=lora, position=i, multiplier=multiplier, sha256=lora.sha256, name=lora.name
        )
    ramp_output(
        done,
        tmp_path,
        record={
            "job_id": str(done.id),
            "model": "wan21_14b",
            **prompts[0],
            "scheduler": "euler",
            "speed": "exact",
            "lora_math": "peft",
            "step_cache": None,
            "loras": [
                {"name": a.name, "sha256": a.sha256, "multiplier": 0.6},
                {"name": b.name, "sha256": b.sha256, "multiplier": 1.2},
            ],
            "software": {"python": "3.11.2", "torch": "2.7.1", "diffusers": "0.34.0"},
            "timings": {"denoise": 12.3456, "save": 0.05},
        },
    )
    running = GenerationJob.objects.create(
        owner=staff,
        status="running",
        priority=5,
        prompts=prompts * 2,
        worker="gpu0@host",
        progress={"prompt": 0, "prompts": 2, "step": 3, "steps": 25, "fraction": 0.4},
    )
    JobLora.objects.create(job=running, lora=a, position=0, multiplier=1.0, sha256=a.sha256, name=a.name)
    return {"staff": staff, "loras": (a, b), "prompt_set": prompt_set, "done": done, "running": running}


def test_admin_pages_in_a_browser(browser, live_server, admin_data):
    from selenium.webdriver.common.by import By

    base = live_server.url
    sign_in(browser, base, "keeper", "pw-keeper-123")
    done, running = admin_data["done"], admin_data["running"]

    browser.get(f"{base}/admin/jobs/generationjob/")
    screenshot(browser, "admin-job-list")
    table = browser.find_element(By.ID, "result_list")
    assert str(done.id)[:8] in table.text and str(done.id) not in table.text
    assert "40%" in table.text and "job_a/job_a@0.6" in table.text
    # nothing scrolls sideways at 1400 px, and an id stays on one line
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1400
    row_heights = browser.execute_script(
        "return [...document.querySelectorAll('#result_list td.field-short_id, #result_list th.field-short_id')]"
        ".map(c => c.getBoundingClientRect().height)"
    )
    assert row_heights and max(row_heights) < 60, row_heights

    browser.get(f"{base}/admin/jobs/generationjob/{done.id}/change/")
    assert "object (" not in browser.page_source
    width, height, _ = video_facts(browser)
    assert (width, height) == (192, 128)
    text = browser.find_element(By.ID, "content").text
    assert "Output 1: 192x128, 17 frames, seed 42" in text and "job_a/job_a\n0.6" in text
    assert "41.2" in text and "12.3" in text and "12.3456" not in text
    screenshot(browser, "admin-job-change")
    browser.execute_script("document.querySelector('.field-timings_table').scrollIntoView()")
    screenshot(browser, "admin-job-change-timings")
    browser.find_element(By.CSS_SELECTOR, ".field-reproduction details summary").click()
    browser.execute_script("document.querySelector('.field-reproduction').scrollIntoView()")
    screenshot(browser, "admin-job-change-record")

    browser.get(f"{base}/admin/jobs/generationjob/{running.id}/change/")
    assert "prompt 1/2 · step 3/25 (40%)" in browser.find_element(By.ID, "content").text
    screenshot(browser, "admin-job-running")

    browser.get(f"{base}/admin/jobs/generationjob/add/")
    screenshot(browser, "admin-job-add")

    lora = admin_data["loras"][0]
    browser.get(f"{base}/admin/loras/lora/{lora.pk}/change/")
    text = browser.find_element(By.ID, "content").text
    assert "ai-toolkit 0.9.4" in text and "KB" in text and "object (" not in browser.page_source
    screenshot(browser, "admin-lora-change")
    browser.execute_script("document.querySelector('.field-format').scrollIntoView()")
    screenshot(browser, "admin-lora-change-header")
    browser.execute_script("document.querySelector('.field-header_info').scrollIntoView()")
    screenshot(browser, "admin-lora-change-info")

    browser.get(f"{base}/admin/prompts/promptset/{admin_data['prompt_set'].pk}/change/")
    screenshot(browser, "admin-promptset-change")
    assert "object (" not in browser.page_source
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1400
    heights = browser.execute_script(
        "return [...document.querySelectorAll('.inline-group tr.form-row')].map(r => r.getBoundingClientRect().height)"
    )
    assert heights and max(heights) < 120, heights


def test_submit_a_two_lora_job_in_a_browser(browser, live_server, admin_data):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    a, b = admin_data["loras"]
    sign_in(browser, live_server.url, "keeper", "pw-keeper-123")
    browser.get(f"{live_server.url}/admin/jobs/generationjob/add/")
    Select(browser.find_element(By.NAME, "prompt_set")).select_by_value(str(admin_data["prompt_set"].pk))
    Select(browser.find_element(By.NAME, "lora_1")).select_by_value(str(a.pk))
    browser.find_element(By.NAME, "multiplier_1").send_keys("0.6")
    Select(browser.find_element(By.NAME, "lora_2")).select_by_value(str(b.pk))
    browser.find_element(By.NAME, "multiplier_2").send_keys("1.2")
    browser.find_element(By.NAME, "_save").click()
    WebDriverWait(browser, 20).until(
        lambda d: "/add/" not in d.current_url or d.find_elements(By.CSS_SELECTOR, ".errornote")
    )
    assert "/add/" not in browser.current_url, browser.find_element(By.ID, "content").text
    job = GenerationJob.objects.exclude(pk__in=[admin_data["done"].pk, admin_data["running"].pk]).get()
    assert [(jl.lora_id, jl.multiplier) for jl in job.job_loras.all()] == [(a.pk, 0.6), (b.pk, 1.2)]
    screenshot(browser, "admin-job-submitted")
