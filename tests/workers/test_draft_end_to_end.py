"""A draft job through a real worker process on the tiny checkpoint: the step-distill LoRA (kohya keys, alpha,
diff_b, norm diffs) loads, 4 steps render with guidance 1 and the distill scheduler, the record says so, and a
re-run renders the same frames from the same stack."""

import numpy as np
import pytest

from tests.mp4 import read_mp4_record
from tests.webapp.test_draft_preset import DRAFT_NAME, draft, draft_lora_file  # noqa: F401 - fixtures
from tests.workers.test_end_to_end import download, finished_job

SIZE = {"width": 96, "height": 64, "num_frames": 5}


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("draft")
def test_a_draft_job_renders_4_distilled_steps_and_its_rerun_the_same(api, start_worker, tmp_path):
    start_worker("draft")
    body = {
        "loras": [{"lora": "job_a/job_a.safetensors", "multiplier": 0.6}],
        "prompts": [{"prompt": "sks walking", **SIZE, "guidance_scale": 5.0}],
        "preset": "draft",
    }
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    job = finished_job(api, response.json()["id"])
    assert job["progress"]["steps"] == 4 and job["progress"]["fraction"] == 1.0
    output = job["outputs"][0]
    assert output["scheduler"] == "distill"
    record = output["record"]
    assert (record["preset"], record["scheduler"], record["sample_steps"], record["guidance_scale"]) == (
        "draft",
        "distill",
        4,
        1.0,
    )
    assert [(lora["name"], lora["multiplier"]) for lora in record["loras"]] == [("job_a/job_a", 0.6), (DRAFT_NAME, 0.9)]
    frames, _ = download(api, output["url"], tmp_path, "draft.mp4")
    assert frames.shape == (5, 64, 96, 3)
    assert read_mp4_record(tmp_path / "draft.mp4")["preset"] == "draft"

    rerun = api.post(f"/api/v1/jobs/{job['id']}/rerun/")
    assert rerun.status_code == 201, rerun.json()
    again = finished_job(api, rerun.json()["id"])
    assert [(lora["name"], lora["multiplier"]) for lora in again["loras"]] == [
        (lora["name"], lora["multiplier"]) for lora in job["loras"]
    ]
    assert again["outputs"][0]["record"]["sample_steps"] == 4 and again["outputs"][0]["scheduler"] == "distill"
    frames_again, _ = download(api, again["outputs"][0]["url"], tmp_path, "again.mp4")
    assert np.array_equal(frames, frames_again)

    fast = api.post("/api/v1/jobs/", {**body, "speed": "fast"}, format="json")
    fast_job = finished_job(api, fast.json()["id"])
    assert (fast_job["outputs"][0]["record"]["speed"], fast_job["outputs"][0]["record"]["preset"]) == ("fast", "draft")


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("draft")
def test_an_ai_toolkit_m_0_turns_off_the_requests_lora_not_the_draft_lora(api, start_worker):
    start_worker("draft-m")
    body = {
        "loras": [{"lora": "job_a/job_a.safetensors", "multiplier": 0.6}],
        "prompts": [{"prompt": "sks walking --m 0", **SIZE}],
        "prompt_semantics": "ai-toolkit",
        "preset": "draft",
    }
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    record = finished_job(api, response.json()["id"])["outputs"][0]["record"]
    assert record["lora_scale"] == 0.0
    assert [(lora["name"], lora["multiplier"]) for lora in record["loras"]] == [("job_a/job_a", 0.0), (DRAFT_NAME, 0.9)]
