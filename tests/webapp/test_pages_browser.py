"""The pages in a real browser (headless Chromium): sign in, see the queue, and the MP4 actually plays."""

import pytest

from tests.webapp.browser import needs_chromium, screenshot, sign_in, video_facts
from tests.webapp.conftest import RAMP, ramp_output
from webapp.jobs.models import GenerationJob

pytestmark = needs_chromium


@pytest.fixture
def rendered_job(transactional_db, django_user_model, tmp_path):
    owner = django_user_model.objects.create_user("viewer", password="pw-viewer-123", is_staff=True, is_superuser=True)
    job = GenerationJob.objects.create(owner=owner, status="succeeded", progress={"fraction": 1.0}, prompts=[RAMP])
    ramp_output(job, tmp_path)
    return job


def test_queue_page_shows_the_job_and_plays_its_video(browser, live_server, rendered_job):
    sign_in(browser, live_server.url, "viewer", "pw-viewer-123")
    assert "a ramp of colours" in browser.page_source
    width, height, duration = video_facts(browser)
    assert (width, height) == (192, 128) and duration == pytest.approx(17 / 16, abs=0.07)
    screenshot(browser, "queue-staff")


def test_admin_job_page_has_a_playing_video(browser, live_server, rendered_job):
    sign_in(browser, live_server.url, "viewer", "pw-viewer-123")
    browser.get(f"{live_server.url}/admin/jobs/generationjob/{rendered_job.id}/change/")
    assert "a ramp of colours" in browser.page_source
    width, height, _ = video_facts(browser)
    assert (width, height) == (192, 128)
