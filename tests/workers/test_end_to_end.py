"""The whole path: API submit -> real Celery worker process -> MP4 in storage -> result endpoint."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, SMALL, wait_for
from tests.mp4 import read_mp4, read_mp4_record
from tests.webapp.test_compat_api import MINIMAL


def download(api, url, tmp_path, name="video.mp4"):
    response = api.get(url)
    assert response.status_code == 200
    path = tmp_path / name
    path.write_bytes(b"".join(response.streaming_content))
    return read_mp4(path)


def finished_job(api, job_id):
    job = wait_for(
        lambda: (j := api.get(f"/api/v1/jobs/{job_id}/").json())["status"] in ("succeeded", "failed", "canceled") and j
    )
    assert job["status"] == "succeeded", job
    return job


@pytest.mark.django_db(transaction=True)
def test_reference_request_renders_on_postgres_and_redis(api, celery_worker, tmp_path):
    prompts = [
        {**MINIMAL["prompts"][0], **SMALL, "fps": 12},
        {"prompt": "[trigger] walking", "width": 96, "height": 64, "num_frames": 6, "sample_steps": 2},
    ]
    response = api.post("/v1/inference", {**MINIMAL, "prompts": prompts}, format="json")
    assert response.status_code == 200, response.json()
    request_id = response.json()["request_id"]

    status = wait_for(
        lambda: (
            (s := api.get(f"/v1/requests/{request_id}/status").json())["status"] in ("succeeded", "failed", "canceled")
            and s
        )
    )
    assert status["status"] == "succeeded", status
    assert status["started_at"] and status["finished_at"]

    result = api.get(f"/v1/requests/{request_id}/result").json()
    first, second = result["outputs"]["videos"]
    assert (first["width"], first["height"], first["num_frames"], first["fps"], first["seed"]) == (128, 128, 9, 12, 42)
    assert (second["width"], second["height"], second["num_frames"], second["seed"]) == (96, 64, 5, 43)
    assert result["metadata"]["inference_time"] > 0

    frames, meta = download(api, first["url"], tmp_path)
    assert frames.shape == (9, 128, 128, 3)
    assert meta["fps"] == 12
    frames, meta = download(api, second["url"], tmp_path)
    assert frames.shape == (5, 64, 96, 3)
    assert meta["fps"] == 16

    job = api.get(f"/api/v1/jobs/{request_id}/").json()
    assert job["attempts"] == 1 and job["progress"]["fraction"] == 1.0 and job["speed"] == "exact"
    assert job["outputs"][0]["record"]["loras"][0]["multiplier"] == 1.0
    assert (job["outputs"][0]["record"]["speed"], job["outputs"][0]["record"]["lora_math"]) == ("exact", "peft")
    assert job["outputs"][0]["record"]["prompt"] == "sks a photo of a person"


@pytest.mark.django_db(transaction=True)
def test_stacked_loras_webp_record_and_rerun(api, celery_worker, tmp_path):
    body = {
        "loras": [{"lora": "job_a/job_a.safetensors", "multiplier": 0.5}, {"lora": "job_b/job_b.safetensors"}],
        "prompts": [{"prompt": "[trigger] by [name] --w 96 --h 64 --steps 2 --m 0.7 --n blurry", **SMALL, "seed": -1}],
        "trigger_word": "sks",
        "prompt_semantics": "ai-toolkit",
        "webp": True,
    }
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    job = finished_job(api, response.json()["id"])
    output = job["outputs"][0]
    assert (output["width"], output["height"], output["scheduler"]) == (96, 64, "euler")  # LoRA A: ai-toolkit 0.9.4
    record = output["record"]
    assert record["prompt"] == "sks by job_a" and record["neg"] == "blurry" and record["lora_scale"] == 0.7
    assert [(lora["name"], lora["multiplier"]) for lora in record["loras"]] == [  # as they ran: `--m 0.7`
        ("job_a/job_a", 0.7),
        ("job_b/job_b", 0.7),
    ]
    assert record["timings"]["denoise"] > 0 and record["software"]["diffusers"]

    frames, _ = download(api, output["url"], tmp_path, "first.mp4")
    assert frames.shape == (9, 64, 96, 3)
    embedded = read_mp4_record(tmp_path / "first.mp4")
    assert embedded["seed"] == output["seed"] and embedded["loras"] == record["loras"]
    webp = api.get(output["webp_url"])
    assert webp.status_code == 200 and webp["Content-Type"] == "image/webp"

    rerun = api.post(f"/api/v1/jobs/{job['id']}/rerun/")
    assert rerun.status_code == 201
    again = finished_job(api, rerun.json()["id"])["outputs"][0]
    assert again["seed"] == output["seed"]
    frames_again, _ = download(api, again["url"], tmp_path, "again.mp4")
    assert np.array_equal(frames, frames_again)


@pytest.mark.django_db(transaction=True)
def test_fast_job_renders_fast_and_its_rerun_stays_fast(api, celery_worker, tmp_path):
    body = {
        "loras": [{"lora": "job_a/job_a.safetensors", "multiplier": 0.8}],
        "prompts": [{"prompt": "sks walking", **SMALL}],
        "speed": "fast",
    }
    response = api.post("/api/v1/jobs/", body, format="json")
    assert response.status_code == 201, response.json()
    job = finished_job(api, response.json()["id"])
    assert job["speed"] == "fast"
    record = job["outputs"][0]["record"]
    assert (record["speed"], record["lora_math"]) == ("fast", "merged") and record["timings"]["fast_merge"] >= 0
    frames, _ = download(api, job["outputs"][0]["url"], tmp_path, "fast.mp4")
    assert read_mp4_record(tmp_path / "fast.mp4")["speed"] == "fast"

    rerun = finished_job(api, api.post(f"/api/v1/jobs/{job['id']}/rerun/").json()["id"])
    assert rerun["speed"] == "fast" and rerun["outputs"][0]["record"]["speed"] == "fast"
    again, _ = download(api, rerun["outputs"][0]["url"], tmp_path, "again.mp4")
    assert np.array_equal(frames, again)


def run_demo(tmp_path, *args, timeout=600):
    """`manage.py demo` with no settings: SQLite, filesystem broker, files under VAR_DIR; the MP4 it printed last."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "WAN_MODEL_PATH", "MEDIA_ROOT", "LORA_ROOT")
    }
    env["VAR_DIR"] = str(tmp_path / "var")

    def run(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )

    assert run("migrate", "--noinput").returncode == 0
    demo = run("demo", *args)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    last = demo.stdout.strip().splitlines()[-1]
    assert last.startswith(str(tmp_path / "var" / "media" / "outputs")) and last.endswith(".mp4")
    assert (tmp_path / "var" / "db.sqlite3").exists()
    return last


@pytest.mark.processes
def test_demo_on_embedded_defaults(tmp_path):
    """`make demo`'s path: the example sized down for a CPU."""
    frames, meta = read_mp4(run_demo(tmp_path))
    assert frames.shape == (9, 256, 256, 3)
    assert meta["fps"] == 16


@pytest.mark.processes
def test_the_verbatim_example_renders_on_the_default_model(tmp_path):
    """examples/minimal_request.json unchanged (1024x1024, 41 frames, 25 steps, guidance 4, its LoRA) through
    the real queue on the tiny default checkpoint: about 6.5 minutes on two CPU cores."""
    path = run_demo(tmp_path, "--full-size", "--timeout", "2400", timeout=2700)
    frames, meta = read_mp4(path)
    assert frames.shape == (41, 1024, 1024, 3) and meta["fps"] == 16
    record = read_mp4_record(path)
    assert (record["prompt"], record["sample_steps"], record["guidance_scale"]) == ("sks a photo of a person", 25, 4.0)
    assert [lora["name"] for lora in record["loras"]] == ["my_lora_job/my_lora"]
