"""The LoRA library and a prompt set in real Chromium, as a member who is not staff (and with JavaScript off)."""

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import TINY_SHAPE
from tests.webapp.browser import needs_chromium, screenshot, sign_in, start_chromium
from tests.webapp.conftest import RESOLVED
from webapp.jobs.models import GenerationJob, JobLora
from webapp.loras.models import Lora
from webapp.loras.services import lora_upload
from webapp.prompts.models import PromptSet
from webapp.prompts.services import prompt_set_create
from workers.pipeline.checkpoints import write_aitoolkit_lora

pytestmark = needs_chromium

ITEMS = [
    {"prompt": "[trigger] walking on a beach at sunset", "width": 832, "height": 480, "num_frames": 33},
    {"prompt": "[trigger] in the snow, slow pan", "seed": 7, "guidance_scale": 5.0},
    {"prompt": "close-up portrait of [trigger], studio light", "neg": "blurry, low quality"},
]


@pytest.fixture
def member(transactional_db, django_user_model, tiny_model):
    return django_user_model.objects.create_user("maria", password="pw-maria-123")


@pytest.fixture
def library(member, django_user_model, tmp_path):
    """A few LoRAs of two people, one used by two jobs."""
    colleague = django_user_model.objects.create_user("tom", password="pw-tom-123")
    loras = []
    for seed, (owner, name, trigger) in enumerate(
        [(colleague, "anime-style", "anm"), (colleague, "watercolor_v2", "wtrclr"), (member, "maria-portrait", "mrx")],
        start=1,
    ):
        path = write_aitoolkit_lora(
            tmp_path / f"{name}.safetensors",
            shape=TINY_SHAPE,
            seed=seed,
            rank=4 * seed,
            software_version="0.9.7",
            training_step=500 * seed,
            trigger_words=(trigger,),
        )
        with path.open("rb") as fh:
            loras.append(lora_upload(fh=fh, filename=path.name, owner=owner, name=name).lora)
    for _ in range(2):
        job = GenerationJob.objects.create(owner=colleague, prompts=[RESOLVED])
        JobLora.objects.create(job=job, lora=loras[0], sha256=loras[0].sha256, name=loras[0].name)
    return loras


def wait_text(driver, text: str, timeout: float = 20):
    """Wait for `text` on the page, across the navigation a click may have started."""
    WebDriverWait(driver, timeout).until(lambda d: text in d.execute_script("return document.body.innerText"))


def wait_value(driver, name: str, value: str, timeout: float = 20):
    """Wait until the field `name` holds `value` (the form may be swapped in place meanwhile)."""
    script = f"const field = document.getElementsByName({name!r})[0]; return field ? field.value : null;"
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script) == value)


def test_upload_twice_search_and_open_a_lora(browser, live_server, member, library, tmp_path):
    sign_in(browser, live_server.url, "maria", "pw-maria-123")
    path = write_aitoolkit_lora(
        tmp_path / "beach_job.safetensors",
        shape=TINY_SHAPE,
        seed=40,
        rank=8,
        software_version="0.9.7",
        training_step=2500,
        trigger_words=("ohwx",),
    )
    for attempt in range(2):
        browser.get(f"{live_server.url}/loras/")
        browser.find_element(By.NAME, "file").send_keys(str(path))
        browser.find_element(By.CSS_SELECTOR, "form.upload button[type=submit]").click()
        wait_text(browser, "Registered beach_job" if attempt == 0 else "already in the library as beach_job")
    lora = Lora.objects.get(name="beach_job")
    assert browser.current_url == f"{live_server.url}/loras/{lora.pk}/" and lora.owner == member
    screenshot(browser, "lora-upload-again")

    browser.get(f"{live_server.url}/loras/")
    browser.find_element(By.NAME, "file").send_keys(str(path))
    browser.find_element(By.NAME, "name").send_keys("beach-renamed")
    browser.find_element(By.CSS_SELECTOR, "form.upload button[type=submit]").click()
    wait_text(browser, "LORA_EXISTS")
    assert "already in the library as beach_job" in browser.find_element(By.CSS_SELECTOR, "[role=alert]").text
    screenshot(browser, "lora-upload-conflict")

    browser.get(f"{live_server.url}/loras/")
    search = browser.find_element(By.NAME, "q")
    search.send_keys("style")
    search.submit()
    WebDriverWait(browser, 20).until(lambda d: "q=style" in d.current_url)
    names = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "table.library tbody td:first-child a")]
    assert names == ["anime-style"] or sorted(names) == ["anime-style"]
    browser.get(f"{live_server.url}/loras/")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.library tbody tr")
    assert len(rows) == 4
    anime = next(row for row in rows if "anime-style" in row.text)
    assert anime.find_element(By.CSS_SELECTOR, f'a[href="/?lora={library[0].pk}"]').text == "2"
    screenshot(browser, "loras")

    anime.find_element(By.LINK_TEXT, "anime-style").click()
    wait_text(browser, "Target modules")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert library[0].sha256 in body and "self_attn.q" in body and "Delete this LoRA" not in body  # tom's LoRA
    screenshot(browser, "lora-detail")


def test_edit_a_prompt_set_reorder_and_save(browser, live_server, member):
    prompt_set = prompt_set_create(owner=member, name="beach tour", items=ITEMS, trigger_word="mrx")
    prompt_set_create(owner=member, name="portraits", items=ITEMS[2:])
    sign_in(browser, live_server.url, "maria", "pw-maria-123")
    browser.get(f"{live_server.url}/prompt-sets/")
    assert "render this set with…" in browser.find_element(By.TAG_NAME, "body").text
    screenshot(browser, "prompt-sets")

    browser.get(f"{live_server.url}/prompt-sets/{prompt_set.pk}/")
    first = browser.find_element(By.NAME, "items-0-prompt")
    first.clear()
    first.send_keys("[trigger] running on a beach at sunset")
    browser.execute_script("window.samePage = true")
    browser.find_element(By.CSS_SELECTOR, 'button[value="down:0"]').click()
    wait_value(browser, "items-1-prompt", "[trigger] running on a beach at sunset")
    assert browser.execute_script("return window.samePage") is True  # htmx swapped the form in place
    assert browser.find_element(By.NAME, "items-0-prompt").get_attribute("value") == ITEMS[1]["prompt"]
    assert PromptSet.objects.get(pk=prompt_set.pk).request_items() == ITEMS  # not saved yet
    browser.find_element(By.CSS_SELECTOR, 'button[value="save"]').click()
    wait_text(browser, "Saved beach tour")

    browser.refresh()
    prompts = [e.get_attribute("value") for e in browser.find_elements(By.CSS_SELECTOR, "textarea[name$='-prompt']")]
    assert prompts == [ITEMS[1]["prompt"], "[trigger] running on a beach at sunset", ITEMS[2]["prompt"]]
    browser.find_element(By.CSS_SELECTOR, "#item-1 summary").click()  # unfold the moved item's settings
    assert browser.find_element(By.NAME, "items-1-width").get_attribute("value") == "832"
    screenshot(browser, "prompt-set-edit")


def test_pages_read_fine_without_javascript(live_server, member, library):
    prompt_set = prompt_set_create(owner=member, name="beach tour", items=ITEMS, trigger_word="mrx")
    driver = start_chromium(javascript=False)
    try:
        sign_in(driver, live_server.url, "maria", "pw-maria-123")
        driver.get(f"{live_server.url}/loras/")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert all(name in body for name in ("anime-style", "watercolor_v2", "maria-portrait", "Upload a LoRA"))
        screenshot(driver, "loras-nojs")

        driver.get(f"{live_server.url}/prompt-sets/{prompt_set.pk}/")
        driver.find_element(By.CSS_SELECTOR, 'button[value="up:2"]').click()  # a plain POST, shown again
        wait_value(driver, "items-1-prompt", ITEMS[2]["prompt"])
        driver.find_element(By.CSS_SELECTOR, 'button[value="save"]').click()
        wait_text(driver, "Saved beach tour")
        assert [item["prompt"] for item in PromptSet.objects.get(pk=prompt_set.pk).request_items()] == [
            ITEMS[0]["prompt"],
            ITEMS[2]["prompt"],
            ITEMS[1]["prompt"],
        ]
        screenshot(driver, "prompt-set-nojs")

        toms = prompt_set_create(owner=library[0].owner, name="tom's set", items=ITEMS[:2], trigger_word="anm")
        driver.get(f"{live_server.url}/prompt-sets/{toms.pk}/")
        body = driver.find_element(By.TAG_NAME, "body").text
        assert ITEMS[1]["prompt"] in body and "Only its owner or staff may change it." in body
        assert not driver.find_elements(By.CSS_SELECTOR, "textarea, button[name=action]")
        screenshot(driver, "prompt-set-readonly")
    finally:
        driver.quit()
