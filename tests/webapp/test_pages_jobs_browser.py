"""The jobs pages in headless Chromium, as a team member who is not staff: submit a LoRA stack, watch
progress change in place while a video keeps playing, filter, cancel and retry, play a job's video,
and read the pages with JavaScript off."""

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.utils import timezone
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.webapp.browser import needs_chromium, screenshot, sign_in, start_chromium, video_facts
from webapp.jobs.models import GenerationJob, JobLora
from webapp.jobs.services import _store_output as store_output  # a finished job's row, as a worker left it
from webapp.loras.services import lora_resolve
from workers.pipeline.video import png_bytes, write_mp4

pytestmark = needs_chromium
PASSWORD = "pw-mia-12345"
PROMPT = {
    "neg": "",
    "width": 192,
    "height": 128,
    "num_frames": 49,
    "sample_steps": 4,
    "guidance_scale": 4.0,
    "seed": 42,
    "fps": 16,
    "lora_scale": None,
}


@pytest.fixture
def mia(transactional_db, django_user_model):
    return django_user_model.objects.create_user("mia", password=PASSWORD)


@pytest.fixture
def loras(transactional_db, tiny_model, lora_files):
    a, b = lora_resolve(ref="job_a/job_a.safetensors"), lora_resolve(ref="job_b/job_b.safetensors")
    a.trigger_word, a.default_multiplier = "sks", 0.8
    a.save()
    return a, b


def make_job(owner, *, prompt: str, status="queued", step=0, loras=(), **fields) -> GenerationJob:
    job = GenerationJob.objects.create(
        owner=owner,
        status=status,
        prompts=[{"prompt": prompt, **PROMPT}],
        progress={"prompt": 0, "prompts": 1, "step": step, "steps": 4, "fraction": step / 4},
        **fields,
    )
    for position, (lora, multiplier) in enumerate(loras):
        JobLora.objects.create(
            job=job, lora=lora, position=position, multiplier=multiplier, sha256=lora.sha256, name=lora.name
        )
    return job


@pytest.fixture
def rendered(mia, loras, tmp_path):
    """A finished job with a real 3 s MP4 (stripes moving across), its poster and a measured step time."""
    x = np.arange(192)[None, None, :] + 4 * np.arange(49)[:, None, None] + np.arange(128)[None, :, None] // 2
    red, green = (x * 3) % 256, (np.arange(49)[:, None, None] * 5 + np.zeros((1, 128, 192))) % 256
    frames = np.stack([red, green, 255 - red], axis=-1).astype(np.uint8)
    job = make_job(
        mia,
        prompt="sks sliding stripes of colour",
        status="succeeded",
        step=4,
        loras=[(loras[0], 0.8)],
        attempts=1,
        worker="gpu-0@render-1",
        timings={
            "load": 3.2,
            "prompts": [{"text_encode": 0.4, "denoise": 8.0, "denoise_per_step": 2.0, "vae_decode": 0.7}],
        },
    )
    mp4 = write_mp4(frames, tmp_path / "clip.mp4", fps=16)
    video = default_storage.save(f"outputs/{job.pk}/000.mp4", ContentFile(mp4.read_bytes()))
    poster = default_storage.save(f"outputs/{job.pk}/000.png", ContentFile(png_bytes(frames[0])))
    store_output(
        job=job,
        index=0,
        video=video,
        poster=poster,
        webp="",
        params=PROMPT | {"seed": 42},
        scheduler="euler",
        record={
            "job_id": str(job.pk),
            "model": "wan21_14b",
            **PROMPT,
            "prompt": job.prompts[0]["prompt"],
            "scheduler": "euler",
            "speed": "exact",
            "loras": [{"name": loras[0].name, "multiplier": 0.8, "sha256": loras[0].sha256}],
            "timings": {"denoise_per_step": 2.0, "vae_decode": 0.7},
        },
    )
    return job


def wait(driver, predicate, timeout=20):
    """Until `predicate(driver)`; an element swapped out meanwhile (htmx) is looked up again."""
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(predicate)


def test_member_submits_a_two_lora_stack_at_different_multipliers(browser, live_server, mia, loras):
    a, b = loras
    sign_in(browser, live_server.url, "mia", PASSWORD)
    browser.get(f"{live_server.url}/jobs/new/")
    rows = browser.find_elements(By.CSS_SELECTOR, ".lora-row")
    assert [row.is_displayed() for row in rows] == [True, False, False, False]  # "add LoRA" reveals the rest
    Select(rows[0].find_element(By.TAG_NAME, "select")).select_by_value(str(a.pk))
    multiplier = rows[0].find_element(By.CSS_SELECTOR, "input[type=number]")
    assert multiplier.get_attribute("value") == "0.8" and "trigger word: sks" in rows[0].text  # the LoRA's defaults
    multiplier.clear()
    multiplier.send_keys("0.6")
    browser.find_element(By.CSS_SELECTOR, "[data-add=lora]").click()
    Select(rows[1].find_element(By.TAG_NAME, "select")).select_by_value(str(b.pk))
    rows[1].find_element(By.CSS_SELECTOR, "input[type=number]").clear()
    rows[1].find_element(By.CSS_SELECTOR, "input[type=number]").send_keys("1.2")
    browser.find_element(By.NAME, "prompt-0-prompt").send_keys("[trigger] dancing in the rain")
    for name, value in {"width": "192", "height": "128", "num_frames": "17", "sample_steps": "4"}.items():
        browser.find_element(By.NAME, f"prompt-0-{name}").send_keys(value)
    browser.find_element(By.CSS_SELECTOR, "[data-add=prompt]").click()
    browser.find_element(By.NAME, "prompt-1-prompt").send_keys("a quiet harbour at dawn")
    screenshot(browser, "submit")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
    wait(browser, lambda d: "/jobs/new/" not in d.current_url)
    job = GenerationJob.objects.get()
    assert browser.current_url.endswith(f"/jobs/{job.pk}/") and "sks dancing in the rain" in browser.page_source
    assert job.owner == mia and job.status == "queued"  # no worker here: it stays queued
    assert [(jl.lora_id, jl.multiplier) for jl in job.job_loras.all()] == [(a.pk, 0.6), (b.pk, 1.2)]
    assert [p["prompt"] for p in job.prompts] == ["sks dancing in the rain", "a quiet harbour at dawn"]


def test_submit_errors_show_next_to_the_fields(browser, live_server, mia, loras):
    a, _ = loras
    sign_in(browser, live_server.url, "mia", PASSWORD)
    browser.get(f"{live_server.url}/jobs/new/?lora={a.pk}")
    browser.find_element(By.NAME, "prompt-0-prompt").send_keys("a cat --frames many")
    Select(browser.find_element(By.NAME, "speed")).select_by_value("fast")
    browser.find_element(By.NAME, "step_cache").send_keys("0.1")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
    wait(browser, lambda d: "OPTIONS_CONFLICT" in d.page_source)  # the serializer's rule across two options
    assert "cannot be combined" in browser.find_element(By.CSS_SELECTOR, "label.option-speed").text
    assert browser.find_element(By.NAME, "prompt-0-prompt").get_attribute("value") == "a cat --frames many"  # kept
    Select(browser.find_element(By.NAME, "speed")).select_by_value("exact")
    browser.find_element(By.NAME, "step_cache").clear()
    Select(browser.find_element(By.NAME, "prompt_semantics")).select_by_value("ai-toolkit")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
    wait(browser, lambda d: "INVALID_PROMPT_FLAG" in d.page_source)  # job_submit's refusal, on its field
    frames = browser.find_element(By.NAME, "prompt-0-num_frames").find_element(By.XPATH, "..")
    assert "--frames needs a number" in frames.text
    screenshot(browser, "submit-errors")
    assert GenerationJob.objects.count() == 0


def test_webhook_section_opens_and_its_fields_submit(browser, live_server, mia, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["hooks.internal"]
    sign_in(browser, live_server.url, "mia", PASSWORD)
    browser.get(f"{live_server.url}/jobs/new/")
    url = browser.find_element(By.NAME, "webhook")
    assert not url.is_displayed()  # collapsed
    browser.find_element(By.CSS_SELECTOR, "details.webhook > summary").click()
    wait(browser, lambda d: url.is_displayed())
    boxes = {box.get_attribute("value"): box for box in browser.find_elements(By.NAME, "webhook_events_filter")}
    assert list(boxes) == ["start", "progress", "output", "completed"]
    assert [box.is_selected() for box in boxes.values()] == [False, False, False, True]
    section = browser.find_element(By.CSS_SELECTOR, "details.webhook").text
    assert "Standard Webhooks" in section and "GET /api/v1/webhooks/secret" in section
    browser.find_element(By.NAME, "prompt-0-prompt").send_keys("a lantern drifting down a canal")
    url.send_keys("http://10.0.0.1/render")
    boxes["progress"].click()
    browser.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
    wait(browser, lambda d: "WEBHOOK_URL_NOT_HTTPS" in d.page_source)  # job_submit's refusal, by its field
    label = browser.find_element(By.CSS_SELECTOR, "label.webhook-url")
    assert label.is_displayed() and "Webhook URLs must use https." in label.text  # still open
    assert GenerationJob.objects.count() == 0
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", label)
    screenshot(browser, "submit-webhook-refused")
    url = browser.find_element(By.NAME, "webhook")
    url.clear()
    url.send_keys("https://hooks.internal/render")
    assert browser.find_element(By.CSS_SELECTOR, "input[name=webhook_events_filter][value=progress]").is_selected()
    screenshot(browser, "submit-webhook")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
    wait(browser, lambda d: "/jobs/new/" not in d.current_url)
    job = GenerationJob.objects.get()
    assert (job.webhook, job.webhook_events_filter) == ("https://hooks.internal/render", ["progress", "completed"])
    options = browser.find_element(By.XPATH, "//section[h2='Options']")
    assert "https://hooks.internal/render" in options.text and "progress, completed" in options.text
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", options)
    screenshot(browser, "job-webhook")


def test_progress_updates_in_place_while_a_video_keeps_playing(browser, live_server, mia, rendered, loras):
    running = make_job(
        mia,
        prompt="a lighthouse in a storm",
        status="running",
        step=1,
        loras=[(loras[1], 1.0)],
        worker="gpu-1@render-2",
        attempts=1,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )
    sign_in(browser, live_server.url, "mia", PASSWORD)
    assert "prompt 1/1 · step 1/4" in browser.page_source
    video_facts(browser, f"#job-{rendered.pk} video")
    browser.execute_script(
        """
        const v = document.querySelector(arguments[0]);
        window.__marker = 1; window.__video = v; window.__ticks = 0;
        v.addEventListener("timeupdate", () => { window.__ticks += 1; });
        v.muted = true; v.play();""",
        f"#job-{rendered.pk} video",
    )
    wait(browser, lambda d: d.execute_script("return window.__ticks > 2"))
    GenerationJob.objects.filter(pk=running.pk).update(
        progress={"prompt": 0, "prompts": 1, "step": 3, "steps": 4, "fraction": 0.75}
    )
    wait(browser, lambda d: "step 3/4" in d.find_element(By.ID, f"job-{running.pk}-status").text)
    ticks = browser.execute_script("return window.__ticks")
    wait(browser, lambda d: d.execute_script("return window.__ticks") > ticks + 2)
    assert browser.execute_script(
        """
        const v = document.querySelector(arguments[0]);
        return [window.__marker, v === window.__video, v.paused, v.currentTime > 0];""",
        f"#job-{rendered.pk} video",
    ) == [1, True, False, True]  # no reload, same element, still playing
    assert "ETA" in browser.find_element(By.ID, f"job-{running.pk}-status").text
    screenshot(browser, "queue")
    GenerationJob.objects.filter(pk=running.pk).update(
        status="failed", error_code="CUDA_OOM", error_message="CUDA out of memory at 1920x1080"
    )
    wait(browser, lambda d: "CUDA_OOM" in d.find_element(By.ID, f"job-{running.pk}").text)
    row = browser.find_element(By.ID, f"job-{running.pk}")
    assert "CUDA out of memory" in row.text and "Retry" in row.text  # the finished row, with its buttons
    assert browser.execute_script("return window.__marker") == 1


def test_filter_the_queue(browser, live_server, mia, django_user_model, loras):
    other = django_user_model.objects.create_user("noor", password="pw-noor-123")
    make_job(
        mia,
        prompt="a red fox in the snow",
        status="failed",
        error_code="TIMEOUT",
        error_message="past its time limit",
        loras=[(loras[0], 0.6)],
    )
    make_job(other, prompt="a red fox at night", loras=[(loras[1], 1.0)])
    make_job(other, prompt="a blue whale", status="failed", error_code="CUDA_OOM", error_message="out of memory")
    sign_in(browser, live_server.url, "mia", PASSWORD)
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.job-row")) == 3
    Select(browser.find_element(By.NAME, "status")).select_by_value("failed")
    browser.find_element(By.NAME, "q").send_keys("fox")
    browser.find_element(By.CSS_SELECTOR, ".filters button[type=submit]").click()
    wait(browser, lambda d: "status=failed" in d.current_url and "q=fox" in d.current_url)
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.job-row")
    assert len(rows) == 1 and "a red fox in the snow" in rows[0].text and "TIMEOUT" in rows[0].text
    assert browser.find_element(By.NAME, "q").get_attribute("value") == "fox"
    screenshot(browser, "queue-filtered")


def test_cancel_and_retry_from_the_queue(browser, live_server, mia, django_user_model):
    job = make_job(mia, prompt="a paper boat on a river")
    theirs = make_job(django_user_model.objects.create_user("noor", password="pw-noor-123"), prompt="not mine")
    sign_in(browser, live_server.url, "mia", PASSWORD)
    browser.get(f"{live_server.url}/?q=boat")
    browser.execute_script("window.__marker = 1")
    browser.find_element(By.CSS_SELECTOR, f"#job-{job.pk} button.danger").click()
    wait(browser, lambda d: "canceled" in d.find_element(By.ID, f"job-{job.pk}").text)
    job.refresh_from_db()
    assert job.status == "canceled"
    browser.find_element(By.XPATH, f"//tr[@id='job-{job.pk}']//button[text()='Retry']").click()
    wait(browser, lambda d: "queued" in d.find_element(By.ID, f"job-{job.pk}").text)
    job.refresh_from_db()
    assert job.status == "queued" and browser.execute_script("return window.__marker") == 1  # swapped in place
    assert browser.current_url.endswith("/?q=boat")
    browser.get(f"{live_server.url}/")
    assert not browser.find_elements(By.CSS_SELECTOR, f"#job-{theirs.pk} button")  # not hers to cancel


def test_job_page_plays_its_video(browser, live_server, mia, rendered):
    sign_in(browser, live_server.url, "mia", PASSWORD)
    browser.find_element(By.CSS_SELECTOR, f"#job-{rendered.pk} a.job-id").click()
    wait(browser, lambda d: d.current_url.endswith(f"/jobs/{rendered.pk}/"))
    width, height, duration = video_facts(browser)
    assert (width, height) == (192, 128) and duration == pytest.approx(49 / 16, abs=0.1)
    browser.execute_script("const v = document.querySelector('video'); v.muted = true; v.play();")
    wait(browser, lambda d: d.execute_script("return document.querySelector('video').currentTime > 0.3"))
    page = browser.find_element(By.TAG_NAME, "main").text.lower()
    for text in [
        "sks sliding stripes of colour",
        "192 × 128",
        "gpu-0@render-1",
        "reproduction record",
        "edit and re-run",
        "re-run",
        "job_a/job_a @ 0.8",
    ]:
        assert text in page, text
    box = browser.execute_script("return document.querySelector('video').getBoundingClientRect().width")
    assert box < 700  # a player, not a wall
    screenshot(browser, "job")


def test_pages_are_readable_without_javascript(live_server, mia, rendered):
    driver = start_chromium(javascript=False)
    try:
        queued = make_job(mia, prompt="a kite over the dunes")
        sign_in(driver, live_server.url, "mia", PASSWORD)
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.job-row")
        assert len(rows) == 2 and "a kite over the dunes" in rows[0].text and "ETA" in rows[0].text
        assert driver.find_element(By.CSS_SELECTOR, f"#job-{rendered.pk} video").get_attribute("poster")
        screenshot(driver, "queue-nojs")
        driver.find_element(By.CSS_SELECTOR, f"#job-{queued.pk} button.danger").click()  # a plain POST form
        wait(driver, lambda d: "canceled." in d.find_element(By.TAG_NAME, "main").text)
        queued.refresh_from_db()
        assert queued.status == "canceled"
        driver.get(f"{live_server.url}/jobs/{rendered.pk}/")
        page = driver.find_element(By.TAG_NAME, "main").text.lower()
        assert "sks sliding stripes of colour" in page and "reproduction record" in page
        screenshot(driver, "job-nojs")
        driver.get(f"{live_server.url}/jobs/new/")
        assert len([row for row in driver.find_elements(By.CSS_SELECTOR, ".lora-row") if row.is_displayed()]) == 4
        assert len([row for row in driver.find_elements(By.CSS_SELECTOR, ".prompt-row") if row.is_displayed()]) == 3
        screenshot(driver, "submit-nojs")
    finally:
        driver.quit()
