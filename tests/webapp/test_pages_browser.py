"""The pages in a real browser (headless Chromium): sign in, see the queue, and the MP4 actually plays."""
import shutil

import numpy as np
import pytest
from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage

from webapp.jobs.models import GenerationJob, JobOutput
from workers.pipeline.video import write_mp4

pytestmark = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                                reason="needs Debian's chromium and chromium-driver (scripts/browser.sh)")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture
def rendered_job(transactional_db, django_user_model, tmp_path):
    owner = django_user_model.objects.create_user("viewer", password="pw-viewer-123", is_staff=True,
                                                  is_superuser=True)
    ramp = np.linspace(0, 255, 17 * 128 * 192 * 3).reshape(17, 128, 192, 3).astype(np.uint8)
    job = GenerationJob.objects.create(owner=owner, status="succeeded", progress={"fraction": 1.0}, prompts=[
        {"prompt": "a ramp of colours", "neg": "", "width": 192, "height": 128, "num_frames": 17, "fps": 16,
         "sample_steps": 4, "guidance_scale": 4.0, "seed": 42}])
    with write_mp4(ramp, tmp_path / "v.mp4", fps=16).open("rb") as fh:
        video = default_storage.save(f"outputs/{job.id}/000.mp4", File(fh))
    JobOutput.objects.create(job=job, index=0, video=video, width=192, height=128, num_frames=17, fps=16, seed=42,
                             scheduler="euler")
    return job


def video_facts(driver):
    """Wait until the page's first video has its metadata, then read what the browser decoded."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(lambda d: d.execute_script(
        "const v = document.querySelector('video'); if (v && v.readyState === 0) v.load();"
        "return v && v.readyState >= 1;"))
    return driver.execute_script(
        "const v = document.querySelector('video'); return [v.videoWidth, v.videoHeight, v.duration];")


def sign_in(driver, base):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/")
    assert "/accounts/login/" in driver.current_url
    driver.find_element(By.NAME, "username").send_keys("viewer")
    driver.find_element(By.NAME, "password").send_keys("pw-viewer-123")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(driver, 20).until(lambda d: d.title == "Render queue")


def test_queue_page_shows_the_job_and_plays_its_video(browser, live_server, rendered_job):
    sign_in(browser, live_server.url)
    assert "Render queue" in browser.title and "a ramp of colours" in browser.page_source
    width, height, duration = video_facts(browser)
    assert (width, height) == (192, 128) and duration == pytest.approx(17 / 16, abs=0.07)
    browser.save_screenshot(str(settings.VAR_DIR / "queue-page.png"))


def test_admin_job_page_has_a_playing_video(browser, live_server, rendered_job):
    sign_in(browser, live_server.url)
    browser.get(f"{live_server.url}/admin/jobs/generationjob/{rendered_job.id}/change/")
    assert "a ramp of colours" in browser.page_source
    width, height, _ = video_facts(browser)
    assert (width, height) == (192, 128)
