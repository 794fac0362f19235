"""The pages in a real browser (headless Chromium): sign in, see the queue, and the MP4 actually plays."""

import numpy as np
import pytest
from django.core.files import File
from django.core.files.storage import default_storage

from tests.webapp.browser import needs_chromium, screenshot, sign_in, video_facts
from webapp.jobs.models import GenerationJob, JobOutput
from workers.pipeline.video import write_mp4

pytestmark = needs_chromium


@pytest.fixture
def rendered_job(transactional_db, django_user_model, tmp_path):
    owner = django_user_model.objects.create_user("viewer", password="pw-viewer-123", is_staff=True, is_superuser=True)
    ramp = np.linspace(0, 255, 17 * 128 * 192 * 3).reshape(17, 128, 192, 3).astype(np.uint8)
    job = GenerationJob.objects.create(
        owner=owner,
        status="succeeded",
        progress={"fraction": 1.0},
        prompts=[
            {
                "prompt": "a ramp of colours",
                "neg": "",
                "width": 192,
                "height": 128,
                "num_frames": 17,
                "fps": 16,
                "sample_steps": 4,
                "guidance_scale": 4.0,
                "seed": 42,
            }
        ],
    )
    with write_mp4(ramp, tmp_path / "v.mp4", fps=16).open("rb") as fh:
        video = default_storage.save(f"outputs/{job.id}/000.mp4", File(fh))
    JobOutput.objects.create(
        job=job, index=0, video=video, width=192, height=128, num_frames=17, fps=16, seed=42, scheduler="euler"
    )
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
