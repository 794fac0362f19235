"""The sweep pages in headless Chromium: a sweep's cells show progress while they render and their videos
appear in place as they finish; then the four players play, pause and seek as one, staying within one
frame of each other; the new-sweep form creates a sweep; and the pages read without JavaScript."""

import time

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.webapp.browser import needs_chromium, screenshot, sign_in, start_chromium, video_facts
from webapp.jobs.models import GenerationJob
from webapp.jobs.services import _store_output as store_output  # a finished job's row, as a worker left it
from webapp.loras.models import Lora
from webapp.loras.services import lora_resolve
from webapp.sweeps.models import Sweep
from webapp.sweeps.serializers import SweepCreateSerializer
from webapp.sweeps.services import sweep_create
from workers.pipeline.video import png_bytes, write_mp4

pytestmark = needs_chromium
PASSWORD = "pw-mia-12345"
FPS, FRAMES, WIDTH, HEIGHT = 16, 33, 96, 64
FRAME = 1 / FPS
VIDEOS = "return [...document.querySelectorAll('video.cell-video')]"


@pytest.fixture
def mia(transactional_db, django_user_model):
    return django_user_model.objects.create_user("mia", password=PASSWORD)


@pytest.fixture
def sweep(mia) -> Sweep:
    """Two seeds against two prompts: four queued cells of 96x64, 33 frames at 16 fps."""
    size = {"width": WIDTH, "height": HEIGHT, "num_frames": FRAMES, "fps": FPS, "sample_steps": 4}
    request = {
        "name": "seeds against prompts",
        "axes": [
            {"field": "seed", "values": [7, 8]},
            {"field": "prompt", "values": [{"prompt": "a red kite", **size}, {"prompt": "a green boat", **size}]},
        ],
    }
    data = SweepCreateSerializer(data=request)
    data.is_valid(raise_exception=True)
    return sweep_create(owner=mia, data=data.validated_data, request=request)


def frames_of(index: int, count: int = FRAMES) -> np.ndarray:
    """A bar moving across a background of the cell's own colour, one step per frame."""
    frames = np.zeros((count, HEIGHT, WIDTH, 3), dtype=np.uint8)
    frames[...] = [(200, 60, 60), (60, 160, 60), (60, 90, 200), (200, 170, 40)][index]
    for f in range(count):
        frames[f, :, (2 * f) % WIDTH : (2 * f) % WIDTH + 6] = 255
    return frames


def render(job: GenerationJob, index: int, tmp_path, count: int = FRAMES) -> None:
    """Store a real MP4 (of `count` frames) and poster for the cell as a worker would, and finish its job."""
    frames = frames_of(index, count)
    mp4 = write_mp4(frames, tmp_path / f"cell-{index}.mp4", fps=FPS)
    video = default_storage.save(f"outputs/{job.pk}/000.mp4", ContentFile(mp4.read_bytes()))
    poster = default_storage.save(f"outputs/{job.pk}/000.png", ContentFile(png_bytes(frames[0])))
    params = job.prompts[0]
    store_output(job=job, index=0, video=video, poster=poster, webp="", params=params, scheduler="euler", record={})
    GenerationJob.objects.filter(pk=job.pk).update(status="succeeded", progress={"fraction": 1.0})


def cells(sweep: Sweep) -> list[GenerationJob]:
    return sorted(sweep.jobs.all(), key=lambda job: (job.sweep_cell["row"], job.sweep_cell["column"]))


def wait(driver, predicate, timeout=20):
    return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(predicate)


def times(driver) -> list[float]:
    return driver.execute_script(VIDEOS + ".map(v => v.currentTime)")


def test_cells_render_in_place_then_play_pause_and_seek_together(browser, live_server, mia, sweep, tmp_path):
    jobs = cells(sweep)
    GenerationJob.objects.filter(pk=jobs[0].pk).update(
        status="running", progress={"prompt": 0, "prompts": 1, "step": 1, "steps": 4, "fraction": 0.25}
    )
    render(jobs[1], 1, tmp_path)
    Sweep.objects.filter(pk=sweep.pk).update(status="running")
    sign_in(browser, live_server.url, "mia", PASSWORD)
    browser.get(f"{live_server.url}/sweeps/{sweep.pk}/")
    grid = browser.find_element(By.CSS_SELECTOR, "table.sweep-grid").text
    for text in ["seed \\ prompt", "a red kite", "a green boat", "7", "8", "running", "25%", "queued"]:
        assert text in grid, text
    assert len(browser.find_elements(By.CSS_SELECTOR, "video.cell-video")) == 1
    video_facts(browser, "video.cell-video")
    browser.execute_script("window.__marker = 1")
    screenshot(browser, "sweep-rendering")

    # the worker moves on: progress and finished cells appear in place, without a reload
    GenerationJob.objects.filter(pk=jobs[0].pk).update(progress={"fraction": 0.75})
    wait(browser, lambda d: "75%" in d.find_element(By.ID, f"cell-{jobs[0].pk}").text)
    for index, job in enumerate(jobs):
        if index != 1:
            render(job, index, tmp_path)
    Sweep.objects.filter(pk=sweep.pk).update(status="succeeded")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "video.cell-video")) == 4)
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "[hx-trigger]"))  # finished: polling stops
    assert browser.execute_script("return window.__marker") == 1
    assert "4 succeeded" in browser.find_element(By.ID, "sweep-status").text
    for index in range(4):
        video_facts(browser, f"tr:nth-child({index // 2 + 1}) td:nth-of-type({index % 2 + 1}) video")
    facts = browser.execute_script(VIDEOS + ".map(v => [v.videoWidth, v.videoHeight, v.controls, v.muted])")
    assert facts == [[WIDTH, HEIGHT, False, True]] * 4  # one set of controls above the grid drives all

    # play: all start, and stay within one frame of each other while they play (and loop)
    browser.find_element(By.CSS_SELECTOR, ".play-all").click()
    wait(browser, lambda d: d.execute_script(VIDEOS + ".every(v => !v.paused && v.currentTime > 0.2)"))
    samples = []
    for _ in range(12):
        samples.append(times(browser))
        time.sleep(0.25)
    assert all(max(sample) - min(sample) <= FRAME for sample in samples), samples
    assert len({round(sample[0], 2) for sample in samples}) > 6  # they were playing all along
    assert "Pause all" in browser.find_element(By.CSS_SELECTOR, ".play-all").text
    screenshot(browser, "sweep-rendered")

    # pause pauses all, at one position
    browser.find_element(By.CSS_SELECTOR, ".play-all").click()
    wait(browser, lambda d: d.execute_script(VIDEOS + ".every(v => v.paused && !v.seeking)"))
    paused = times(browser)
    assert max(paused) - min(paused) <= FRAME / 2
    # seeking moves all
    browser.execute_script(
        "const s = document.querySelector('.seek-all'); s.value = 1.25; s.dispatchEvent(new Event('input'));"
    )
    wait(browser, lambda d: all(abs(t - 1.25) <= FRAME / 2 for t in times(d)))
    assert browser.execute_script(VIDEOS + ".every(v => v.paused)")
    assert "1.25 s" in browser.find_element(By.CSS_SELECTOR, ".time-all").text

    # each cell links to its job and to the submit page at full settings
    links = browser.find_element(By.ID, f"cell-{jobs[2].pk}").find_elements(By.TAG_NAME, "a")
    assert links[0].get_attribute("href").endswith(f"/jobs/{jobs[2].pk}/")
    links[1].click()
    wait(browser, lambda d: "/jobs/new/" in d.current_url)
    assert browser.find_element(By.NAME, "prompt-0-prompt").get_attribute("value") == "a red kite"
    assert browser.find_element(By.NAME, "prompt-0-seed").get_attribute("value") == "8"


def test_a_shorter_cell_holds_its_last_frame_while_the_longer_ones_play_on(browser, live_server, mia, sweep, tmp_path):
    short = 9  # frames: 0.5625 s against the others' 2.0625 s; the first cell, so the leader is another
    for index, job in enumerate(cells(sweep)):
        render(job, index, tmp_path, count=short if index == 0 else FRAMES)
    Sweep.objects.filter(pk=sweep.pk).update(status="succeeded")
    sign_in(browser, live_server.url, "mia", PASSWORD)
    browser.get(f"{live_server.url}/sweeps/{sweep.pk}/")
    wait(browser, lambda d: d.execute_script(VIDEOS + ".every(v => v.readyState >= 1)"))
    assert abs(float(browser.find_element(By.CSS_SELECTOR, ".seek-all").get_attribute("max")) - FRAMES / FPS) < FRAME

    browser.find_element(By.CSS_SELECTOR, ".play-all").click()
    wait(browser, lambda d: min(times(d)[1:]) > short / FPS + 0.5)
    state = browser.execute_script(VIDEOS + ".map(v => [v.paused, v.currentTime, v.duration])")
    (held, at, length), others = state[0], state[1:]
    assert held and abs(at - length) <= FRAME, state  # stopped on its last frame, not started over
    assert not any(paused for paused, _, _ in others) and max(t for _, t, _ in others) < FRAMES / FPS, state
    screenshot(browser, "sweep-short-cell-held")


@pytest.fixture
def checkpoints(transactional_db, tiny_model, lora_files) -> list[Lora]:
    """Two checkpoints of one training run, steps 500 and 1000."""
    loras = [lora_resolve(ref="job_b/job_b.safetensors"), lora_resolve(ref="job_a/job_a.safetensors")]
    for step, lora in zip((500, 1000), loras):
        Lora.objects.filter(pk=lora.pk).update(training_run="mrx_run", training_step=step)
    return loras


def test_list_and_new_sweep_pages(browser, live_server, mia, sweep, checkpoints):
    sign_in(browser, live_server.url, "mia", PASSWORD)
    browser.find_element(By.LINK_TEXT, "Sweeps").click()
    wait(browser, lambda d: d.current_url.endswith("/sweeps/"))
    row = browser.find_element(By.ID, f"sweep-{sweep.pk}")
    assert "seeds against prompts" in row.text and "4 cells" in row.text and "4 queued" in row.text
    screenshot(browser, "sweep-list")
    browser.find_element(By.LINK_TEXT, "New sweep").click()
    wait(browser, lambda d: d.current_url.endswith("/sweeps/new/"))
    axes = browser.find_elements(By.CSS_SELECTOR, ".axis-row")
    assert [axis.is_displayed() for axis in axes] == [True, False, False]  # "add axis" reveals the next
    browser.find_element(By.NAME, "name").send_keys("three seeds, two checkpoints")
    browser.find_element(By.NAME, "prompts").send_keys("a lighthouse at dusk")
    Select(browser.find_element(By.NAME, "axis-0-field")).select_by_value("seed")
    assert not axes[0].find_element(By.CSS_SELECTOR, ".axis-loras").is_displayed()
    browser.find_element(By.NAME, "axis-0-values").send_keys("1, 2, 3")
    browser.find_element(By.CSS_SELECTOR, "[data-add=axis]").click()
    Select(browser.find_element(By.NAME, "axis-1-field")).select_by_value("lora")
    assert axes[1].find_element(By.CSS_SELECTOR, ".axis-loras").is_displayed()
    assert not axes[1].find_element(By.CSS_SELECTOR, ".axis-values").is_displayed()
    picker = axes[1].find_element(By.CSS_SELECTOR, "optgroup[label=mrx_run]").text
    assert picker.index("step 500") < picker.index("step 1000")  # a run's checkpoints by step
    for name, value in {"width": "64", "height": "64", "num_frames": "9", "sample_steps": "4"}.items():
        browser.find_element(By.NAME, name).send_keys(value)
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot(browser, "sweep-new")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()  # a lora axis without LoRAs
    wait(browser, lambda d: "SWEEP_BAD_AXES" in d.page_source)
    assert "lora axis has no values" in browser.find_elements(By.CSS_SELECTOR, ".axis-row")[1].text
    screenshot(browser, "sweep-new-errors")
    picker = Select(browser.find_element(By.NAME, "axis-1-loras"))
    for lora in checkpoints:
        picker.select_by_value(str(lora.pk))
    browser.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
    wait(browser, lambda d: "/sweeps/new/" not in d.current_url)
    created = Sweep.objects.get(name="three seeds, two checkpoints")
    assert browser.current_url.endswith(f"/sweeps/{created.pk}/") and created.jobs.count() == 6
    grid = browser.find_element(By.CSS_SELECTOR, "table.sweep-grid").text
    assert "seed \\ lora" in grid and "6 queued" in browser.find_element(By.ID, "sweep-status").text
    screenshot(browser, "sweep-queued")


def test_compare_as_a_sweep_from_the_submit_page(browser, live_server, mia, checkpoints):
    first, _ = checkpoints
    sign_in(browser, live_server.url, "mia", PASSWORD)
    browser.get(f"{live_server.url}/jobs/new/")
    browser.find_element(By.NAME, "prompt-0-prompt").send_keys("a lighthouse at dusk")
    browser.find_element(By.NAME, "prompt-0-width").send_keys("320")
    Select(browser.find_element(By.NAME, "lora-0-lora")).select_by_value(str(first.pk))
    screenshot(browser, "submit-compare")
    browser.find_element(By.XPATH, "//button[text()='Compare as a sweep']").click()
    wait(browser, lambda d: d.current_url.endswith("/sweeps/new/"))
    assert browser.find_element(By.NAME, "prompts").get_attribute("value") == "a lighthouse at dusk"
    assert browser.find_element(By.NAME, "width").get_attribute("value") == "320"
    assert Select(browser.find_element(By.NAME, "base-0-lora")).first_selected_option.get_attribute("value") == str(
        first.pk
    )
    assert Select(browser.find_element(By.NAME, "axis-0-field")).first_selected_option.text == "multiplier"
    screenshot(browser, "sweep-new-from-submit")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit].primary").click()
    wait(browser, lambda d: "/sweeps/new/" not in d.current_url)
    assert Sweep.objects.get(name=f"Compare {first.name}").jobs.count() == 3  # 0.5, 0.75 and 1.0


def test_sweep_page_reads_without_javascript(live_server, mia, sweep, tmp_path):
    for index, job in enumerate(cells(sweep)):
        render(job, index, tmp_path)
    driver = start_chromium(javascript=False)
    try:
        sign_in(driver, live_server.url, "mia", PASSWORD)
        driver.get(f"{live_server.url}/sweeps/{sweep.pk}/")
        videos = driver.find_elements(By.CSS_SELECTOR, "video.cell-video")
        assert len(videos) == 4 and all(video.get_attribute("controls") for video in videos)  # each its own
        assert not driver.find_element(By.CSS_SELECTOR, ".sweep-player").is_displayed()
        screenshot(driver, "sweep-nojs")
    finally:
        driver.quit()
