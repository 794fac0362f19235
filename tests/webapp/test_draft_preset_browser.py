"""The submit page's preset in headless Chromium: a member picks "draft" beside their LoRA and gets a draft job
with the server's step-distill LoRA after theirs."""

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.webapp.browser import needs_chromium, screenshot, sign_in
from tests.webapp.test_draft_preset import DRAFT_NAME, DRAFT_PATH, draft_lora_file  # noqa: F401 - a fixture
from webapp.jobs.models import GenerationJob
from webapp.loras.services import lora_resolve

pytestmark = needs_chromium
PASSWORD = "pw-nia-12345"


@pytest.fixture
def nia(transactional_db, django_user_model, tiny_model, lora_files, settings, draft_lora_file):  # noqa: F811
    settings.DRAFT_LORA = DRAFT_PATH
    return django_user_model.objects.create_user("nia", password=PASSWORD)


def test_member_picks_the_draft_preset(browser, live_server, nia):
    style = lora_resolve(ref="job_a/job_a.safetensors")
    sign_in(browser, live_server.url, "nia", PASSWORD)
    browser.get(f"{live_server.url}/jobs/new/")
    preset = browser.find_element(By.NAME, "preset")
    label = preset.find_element(By.XPATH, "..")
    assert "4 steps without CFG" in label.text and preset.is_displayed()
    steps, guidance = (browser.find_element(By.NAME, f"prompt-0-{name}") for name in ("sample_steps", "guidance_scale"))
    assert (steps.get_attribute("placeholder"), guidance.get_attribute("placeholder")) == ("25", "4.0")
    Select(preset).select_by_value("draft")  # an empty field now takes the draft's value, and says so
    assert (steps.get_attribute("placeholder"), guidance.get_attribute("placeholder")) == ("4", "1.0")
    Select(browser.find_element(By.NAME, "lora-0-lora")).select_by_value(str(style.pk))
    browser.find_element(By.NAME, "prompt-0-prompt").send_keys("a lighthouse in a storm")
    screenshot(browser, "submit-draft")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
    WebDriverWait(browser, 20).until(lambda d: "/jobs/new/" not in d.current_url)
    job = GenerationJob.objects.get()
    assert (job.preset, job.scheduler, job.prompts[0]["sample_steps"]) == ("draft", "distill", 4)
    assert [jl.name for jl in job.job_loras.all()] == ["job_a/job_a", DRAFT_NAME]
