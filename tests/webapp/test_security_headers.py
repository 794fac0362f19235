"""Response headers: a Content-Security-Policy that lets only this site's scripts run (and the pages still
work under it, in Chromium), HSTS in production, and a clean `manage.py check --deploy`."""

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.conftest import ROOT
from tests.webapp.browser import needs_chromium, sign_in
from webapp.jobs.models import GenerationJob
from webapp.jobs.services import _store_output as store_output  # a finished job's row, as a worker left it
from webapp.loras.services import lora_resolve
from webapp.prompts.services import prompt_set_create
from workers.pipeline.video import png_bytes, write_mp4

PROMPT = {"width": 64, "height": 64, "num_frames": 9, "sample_steps": 2, "guidance_scale": 4.0, "seed": 42, "fps": 8}


def policy(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {part.split()[0]: part.split()[1:] for part in header.split(";") if part.strip()}


# --- the policy ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/", "/jobs/new/", "/loras/", "/prompt-sets/", "/admin/", "/api/v1/jobs/", "/health"])
def test_pages_and_api_answers_carry_the_policy(admin_client, url):
    csp = policy(admin_client.get(url))
    assert csp["default-src"] == csp["script-src"] == ["'self'"]  # no inline script, no eval, no other host
    assert csp["style-src"] == ["'self'", "'unsafe-inline'"]
    assert csp["img-src"] == ["'self'", "data:", "blob:"] and csp["media-src"] == ["'self'", "blob:"]
    assert csp["object-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["form-action"] == csp["base-uri"] == csp["connect-src"] == ["'self'"]


@pytest.mark.django_db
def test_the_sign_in_page_carries_the_policy():
    assert policy(Client().get("/accounts/login/"))["script-src"] == ["'self'"]


def test_the_api_docs_page_loads_swagger_ui_from_this_server(client):
    csp = policy(client.get("/api/docs/"))
    assert csp["script-src"] == ["'self'"] and csp["connect-src"] == ["'self'"]


def test_no_template_runs_inline_script():
    """What script-src 'self' would block: inline <script> blocks and on* handler attributes."""
    for path in (ROOT / "templates").rglob("*.html"):
        html = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert "src=" in tag or 'type="application/json"' in tag, (path, tag)
        assert not re.search(r"\son[a-z]+\s*=", html), path
        assert "hx-on" not in html and "javascript:" not in html, path


SETUP = "import django, os; os.environ['DJANGO_SETTINGS_MODULE']='webapp.settings'; django.setup()"


def run(tmp_path, args, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG", "ALLOWED_HOSTS")}
    environ.pop("DJANGO_SETTINGS_MODULE", None)
    environ.update(VAR_DIR=str(tmp_path), **env)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120, check=False
    )


def csp_of(tmp_path, **env) -> dict:
    code = SETUP + "; from django.conf import settings; print(repr(settings.SECURE_CSP))"
    result = run(tmp_path, ["-c", code], **env)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout)  # noqa: S307 - our own settings' repr


@pytest.mark.parametrize(
    "env,origins",
    [
        ({"AWS_S3_ENDPOINT_URL": "https://minio.example.com:9000/"}, ["https://minio.example.com:9000"]),
        (
            {"AWS_S3_REGION_NAME": "eu-west-1"},
            ["https://media.s3.amazonaws.com", "https://media.s3.eu-west-1.amazonaws.com"],
        ),
    ],
)
def test_videos_and_posters_may_come_from_the_bucket(tmp_path, env, origins):
    csp = csp_of(tmp_path, AWS_STORAGE_BUCKET_NAME="media", **env)
    assert csp["media-src"] == ["'self'", "blob:", *origins]
    assert csp["img-src"] == ["'self'", "data:", "blob:", *origins]
    assert csp["script-src"] == ["'self'"]


# --- production: HSTS and the deploy check -------------------------------------------------------------------

PRODUCTION = {"DJANGO_ENV": "production", "SECRET_KEY": secrets.token_urlsafe(64), "ALLOWED_HOSTS": "queue.example.com"}


def test_the_deploy_check_finds_nothing(tmp_path):
    result = run(tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout


def headers_of(tmp_path, request: str, **env) -> dict:
    code = SETUP + (
        "; from django.test import Client; "
        f"r = Client(HTTP_HOST='queue.example.com').get('/health', {request}); "
        "print(repr({k: v for k, v in r.headers.items() if k.startswith(('Strict', 'Content-Security', 'X-'))}))"
    )
    result = run(tmp_path, ["-c", code], **PRODUCTION, **env)
    assert result.returncode == 0, result.stderr
    return eval(result.stdout)  # noqa: S307 - printed by the code above


def test_production_sends_hsts_on_https_for_a_year(tmp_path):
    headers = headers_of(tmp_path, "secure=True")
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    assert headers["X-Content-Type-Options"] == "nosniff" and "Content-Security-Policy" in headers
    assert "Strict-Transport-Security" not in headers_of(tmp_path, "secure=False")


def test_behind_the_tls_proxy_hsts_follows_its_forwarded_proto(tmp_path):
    headers = headers_of(
        tmp_path,
        "HTTP_X_FORWARDED_PROTO='https'",
        BEHIND_TLS_PROXY="true",
        SECURE_HSTS_SECONDS="600",
        SECURE_HSTS_INCLUDE_SUBDOMAINS="true",
    )
    assert headers["Strict-Transport-Security"] == "max-age=600; includeSubDomains"


def test_no_hsts_on_a_plain_http_network(tmp_path):
    assert "Strict-Transport-Security" not in headers_of(tmp_path, "secure=True", SECURE_COOKIES="false")


# --- in Chromium: the pages work under the policy ------------------------------------------------------------------

WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", e => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""


@pytest.fixture
def site(transactional_db, django_user_model, tiny_model, lora_files, tmp_path):
    """A superuser, a LoRA, a prompt set, a queued job and a finished one with a real MP4 and poster."""
    root = django_user_model.objects.create_superuser("root", "root@example.com", "pw-root-123")
    lora = lora_resolve(ref="job_a/job_a.safetensors")
    lora.default_multiplier = 0.7
    lora.save()
    prompt_set = prompt_set_create(owner=root, name="beach", items=[{"prompt": "[trigger] on a beach"}])
    queued = GenerationJob.objects.create(owner=root, prompts=[{"prompt": "waiting", **PROMPT}], progress={})
    done = GenerationJob.objects.create(
        owner=root, status="succeeded", prompts=[{"prompt": "stripes", **PROMPT}], progress={"fraction": 1.0}
    )
    x = np.arange(64)[None, None, :] + 4 * np.arange(9)[:, None, None] + np.zeros((1, 64, 1))
    frames = np.stack([(x * 3) % 256] * 3, axis=-1).astype(np.uint8)
    mp4 = write_mp4(frames, tmp_path / "clip.mp4", fps=8)
    video = default_storage.save(f"outputs/{done.pk}/000.mp4", ContentFile(Path(mp4).read_bytes()))
    poster = default_storage.save(f"outputs/{done.pk}/000.png", ContentFile(png_bytes(frames[0])))
    store_output(
        job=done, index=0, video=video, poster=poster, webp="", params=PROMPT, scheduler="euler", record={"seed": 42}
    )
    return {"lora": lora, "prompt_set": prompt_set, "queued": queued, "done": done}


@needs_chromium
def test_every_page_runs_under_the_policy_without_a_violation(browser, live_server, site):
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_CSP})
    base, seen = live_server.url, {}

    def visit(path):
        browser.get(base + path)
        WebDriverWait(browser, 20).until(lambda d: d.execute_script("return document.readyState") == "complete")
        seen[path] = browser.execute_script("return window.__csp")

    visit("/accounts/login/")
    sign_in(browser, base, "root", "pw-root-123")
    lora, prompt_set, queued, done = site["lora"].pk, site["prompt_set"].pk, site["queued"].pk, site["done"].pk
    for path in [
        "/",
        f"/jobs/{done}/",
        f"/jobs/{queued}/",
        "/loras/",
        f"/loras/{lora}/",
        "/prompt-sets/",
        "/prompt-sets/new/",
        f"/prompt-sets/{prompt_set}/",
        "/admin/",
        "/admin/jobs/generationjob/",
        "/admin/jobs/generationjob/add/",
        f"/admin/jobs/generationjob/{done}/change/",
        f"/admin/loras/lora/{lora}/change/",
        f"/admin/prompts/promptset/{prompt_set}/change/",
        "/api/v1/jobs/",
        "/api/docs/",
    ]:
        visit(path)
    assert {path: found for path, found in seen.items() if found} == {}

    # the submit page's script (a static file now): picking a LoRA fills in its default multiplier
    visit("/jobs/new/")
    row = browser.find_element(By.CSS_SELECTOR, ".lora-row")
    Select(row.find_element(By.TAG_NAME, "select")).select_by_value(str(lora))
    assert row.find_element(By.CSS_SELECTOR, "input[type=number]").get_attribute("value") == "0.7"

    # the queue's: a thumbnail plays under the pointer; htmx swaps a canceled row in place
    visit("/")
    browser.execute_script("window.__marker = 1")
    video = browser.find_element(By.CSS_SELECTOR, f"#job-{done} video.thumb")
    ActionChains(browser).move_to_element(video).perform()
    WebDriverWait(browser, 20).until(lambda d: d.execute_script("return !arguments[0].paused", video))
    browser.find_element(By.CSS_SELECTOR, f"#job-{queued} button.danger").click()
    WebDriverWait(browser, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: "canceled" in d.find_element(By.ID, f"job-{queued}").text
    )
    assert browser.execute_script("return [window.__marker, window.__csp]") == [1, []]
    logged = [entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]]
    assert logged == []
