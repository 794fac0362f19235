"""A worker that owns two devices (WAN_CP_DEVICES) renders each job across both, through the real queue."""

import pytest

from tests.conftest import SMALL
from tests.workers.test_end_to_end import download, finished_job


@pytest.mark.django_db(transaction=True)
def test_a_worker_owning_two_devices_splits_each_job(api, start_worker, tmp_path):
    worker = start_worker("split", WAN_CP_DEVICES="cpu,cpu")
    body = {
        "loras": [{"lora": "job_a/job_a.safetensors", "multiplier": 0.5}, {"lora": "job_b/job_b.safetensors"}],
        "prompts": [{"prompt": "sks walking", **SMALL}],
        "step_cache": 0.2,
    }
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    job = finished_job(api, response.json()["id"])
    record = job["outputs"][0]["record"]
    assert record["step_cache"] is None  # the ranks would decide apart: this worker never skips steps
    frames, _ = download(api, job["outputs"][0]["url"], tmp_path)
    assert frames.shape == (SMALL["num_frames"], SMALL["height"], SMALL["width"], 3)
    worker.stop()
    log = worker.log.name and open(worker.log.name).read()
    assert "rank 1" in log and "Traceback" not in log
