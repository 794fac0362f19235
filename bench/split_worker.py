"""A real Celery worker that owns two GPUs, through the queue: a two-LoRA job canceled mid-job, then one
rendered end to end, decoded back from its MP4.

The web half runs on the embedded defaults (`make demo`'s SQLite database and filesystem broker) since a GPU
host here has no PostgreSQL or Redis; the worker is the same process `make up` starts. Each `--split` value
starts its own worker: "cp" with WAN_CP_DEVICES=cuda:0,cuda:1 (Ulysses, one rank per GPU), "cfg" with
WAN_DEVICE=cuda:0 WAN_CFG_DEVICE=cuda:1 (the unconditional pass on the second GPU).

    python bench/split_worker.py --split cp,cfg
    python bench/split_worker.py --devices cpu,cpu --model DIR --size 256x256x33 --steps 60   # the same on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("OUT", "."))
VAR = Path("/tmp/var_split")


def split_env(split: str, devices: list[str]) -> dict:
    if split == "cp":
        return {"WAN_CP_DEVICES": ",".join(devices)}
    return {"WAN_DEVICE": devices[0], "WAN_CFG_DEVICE": devices[1]}


LORAS = [{"path": "job_a/job_a.safetensors", "network_multiplier": 0.8}, {"path": "job_b/job_b.safetensors"}]


def setup(model: str):
    shutil.rmtree(VAR, ignore_errors=True)  # no job, message or LoRA (shaped for another model) left from a run before
    os.environ.update(
        {"DJANGO_SETTINGS_MODULE": "webapp.settings", "VAR_DIR": str(VAR), "WAN_MODEL_PATH": model},
    )
    for name in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(name, None)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from workers.pipeline.checkpoints import write_aitoolkit_lora
    from workers.pipeline.shapes import WanShape

    call_command("migrate", verbosity=0)
    shape = WanShape.of(json.loads((Path(model) / "transformer" / "config.json").read_text()))
    for i, item in enumerate(LORAS):  # rank 32, or less for a tiny model's layers
        write_aitoolkit_lora(settings.LORA_ROOT / item["path"], shape=shape, rank=min(32, shape.dim), seed=i)


def submit(size: str, steps: int, seed: int):
    from django.contrib.auth import get_user_model

    from webapp.jobs.compat import inference_submit

    width, height, frames = (int(v) for v in size.split("x"))
    prompt = {"prompt": "[trigger] a person on a beach", "width": width, "height": height, "num_frames": frames}
    body = {
        "model": "wan21_14b",
        "trigger_word": "sks",
        "prompts": [{**prompt, "sample_steps": steps, "seed": seed, "guidance_scale": 4.0, "fps": 16}],
        "loras": LORAS,
    }
    user, _ = get_user_model().objects.get_or_create(username="bench")
    return inference_submit(body=body, user=user)


def wait(job_id, until, timeout: float):
    from webapp.jobs.models import GenerationJob

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = GenerationJob.objects.get(pk=job_id)
        if until(job):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id}: {job.status} {job.progress}")


def run_split(split: str, devices: list[str], size: str, steps: int, timeout: float) -> dict:
    from webapp.core.storage import storage_location
    from webapp.jobs.models import JobStatus
    from webapp.jobs.services import IllegalTransition, job_cancel
    from workers.celery_app import worker_argv

    log = open(OUT / f"worker_{split}.log", "w")
    env = {**os.environ, **split_env(split, devices)}
    started = time.monotonic()
    worker = subprocess.Popen(
        worker_argv(queues="gpu", name=f"{split}@%h", loglevel="INFO"), cwd=ROOT, env=env, stdout=log, stderr=log
    )
    row = {"split": split, "shape": size, "steps": steps}
    try:
        first = submit(size, steps=steps, seed=1)
        job = wait(first.pk, lambda j: j.is_finished or j.progress.get("step", 0) >= 2, timeout)
        row["first_step_after_start_s"] = round(time.monotonic() - started, 1)
        asked = time.monotonic()
        with contextlib.suppress(IllegalTransition):  # it ended first (failed, or too quick): the row says so
            job_cancel(job=job)
        job = wait(first.pk, lambda j: j.is_finished, timeout)
        row["canceled_job"] = f"{job.status} at step {job.progress.get('step')}/{job.progress.get('steps')}"
        second = submit(size, steps=steps, seed=2)
        begun = time.monotonic()
        job = wait(second.pk, lambda j: j.is_finished, timeout)
        row["cancel_to_next_done_s"] = round(time.monotonic() - asked, 1)
        row["second_job_s"] = round(time.monotonic() - begun, 1)
        row["second_job"] = job.status
        if job.status == JobStatus.SUCCEEDED:
            from tests.mp4 import read_mp4

            output = job.outputs.get()
            frames, meta = read_mp4(storage_location(output.video.name))
            row["mp4"] = f"{frames.shape[0]}x{meta['size'][0]}x{meta['size'][1]}"
            row["frames_vary"] = bool(frames.std() > 1)
            row["timings"] = job.timings
        else:
            row["error"] = f"{job.error_code}: {job.error_message}"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
    text = (OUT / f"worker_{split}.log").read_text()
    row["worker_log_traceback"] = "Traceback" in text
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--split", default="cp,cfg")
    parser.add_argument("--size", default="832x480x81")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=240)
    parser.add_argument("--devices", default="cuda:0,cuda:1")
    parser.add_argument("--model", help="a diffusers Wan folder (default: the random-weight 14B, written once)")
    args = parser.parse_args()
    if args.model is None:
        from bench.common import ensure_wan14b

        args.model = ensure_wan14b(Path("/tmp/wan14b/model"))
    setup(args.model)
    rows = []
    for split in args.split.split(","):
        rows.append(run_split(split, args.devices.split(","), args.size, args.steps, args.timeout))
        print(json.dumps(rows[-1]), flush=True)
    (OUT / "split_worker.json").write_text(json.dumps(rows, indent=1))
    print("\nsplit | first step after start s | canceled | cancel to next job done s | next job | MP4 | traceback")
    for r in rows:
        print(
            f"{r['split']} | {r.get('first_step_after_start_s')} | {r.get('canceled_job')} | "
            f"{r.get('cancel_to_next_done_s')} | {r.get('second_job')} {r.get('second_job_s')} s | {r.get('mp4')} | "
            f"{r['worker_log_traceback']}"
        )


if __name__ == "__main__":
    main()
