"""Render examples/minimal_request.json through the real queue and print the MP4's path last.

Without WAN_MODEL_PATH it first writes a tiny random-weight Wan 2.1 checkpoint
and an ai-toolkit-format LoRA at LORA_ROOT/my_lora_job/my_lora.safetensors, so
the request's LoRA path resolves. The request is sized down for a CPU; every
other field is sent verbatim. A real Celery worker process renders it.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.exceptions import ValidationError

from webapp.core.catalog import model_shape
from webapp.core.errors import ApiError
from webapp.core.storage import storage_location
from webapp.jobs.compat import inference_submit
from webapp.jobs.models import GenerationJob, JobStatus
from workers.celery_app import worker_argv

REQUEST = settings.BASE_DIR / "examples" / "minimal_request.json"
CPU_SIZE = {"width": 256, "height": 256, "num_frames": 9, "sample_steps": 4}


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser):
        parser.add_argument("--request", type=Path, default=REQUEST)
        parser.add_argument("--full-size", action="store_true", help="send the request unchanged (GPU)")
        parser.add_argument("--timeout", type=float, default=600)

    def handle(self, request, full_size, timeout, **options):
        try:
            body = json.loads(request.read_text())
        except (OSError, ValueError) as exc:
            raise CommandError(f"BAD_REQUEST_FILE: {request}: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("prompts"), list):
            raise CommandError(f"BAD_REQUEST_FILE: {request} is not a request (an object with a prompts list)")
        self.prepare_model(body)
        if not full_size:
            body["prompts"] = [{**p, **CPU_SIZE} if isinstance(p, dict) else p for p in body["prompts"]]
        user, _ = get_user_model().objects.get_or_create(username="demo")
        try:
            job = inference_submit(body=body, user=user)
        except ValidationError as exc:  # what the API answers with VALIDATION_ERROR
            raise CommandError(f"VALIDATION_ERROR: {exc.detail}") from None
        except ApiError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        self.stdout.write(f"queued job {job.id}")
        worker = subprocess.Popen(worker_argv(queues="gpu", name="demo@%h", loglevel="WARNING"), cwd=settings.BASE_DIR)
        try:
            job = self.wait(job.pk, timeout)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        if job.status != JobStatus.SUCCEEDED:
            raise CommandError(f"job {job.status}: {job.error_code} {job.error_message}")
        output = job.outputs.first()
        self.stdout.write(
            f"{output.width}x{output.height}, {output.num_frames} frames @ {output.fps} fps, "
            f"seed {output.seed}, scheduler {output.scheduler}"
        )
        self.stdout.write(storage_location(output.video.name))

    def prepare_model(self, body):
        model_dir = Path(settings.WAN_MODEL_PATH)
        if not (model_dir / "model_index.json").exists():
            if "WAN_MODEL_PATH" in os.environ:
                raise CommandError(f"WAN_MODEL_PATH={model_dir} holds no diffusers pipeline")
            from workers.pipeline.checkpoints import write_random_wan

            self.stdout.write(f"writing a tiny random-weight Wan 2.1 checkpoint to {model_dir}")
            write_random_wan(model_dir)
        for item in body.get("loras", []):
            lora = settings.LORA_ROOT / item["path"]
            if not lora.exists() and not item["path"].startswith(("http://", "https://")):
                from workers.pipeline.checkpoints import write_aitoolkit_lora

                self.stdout.write(f"writing an ai-toolkit-format LoRA to {lora}")
                write_aitoolkit_lora(lora, shape=model_shape(body["model"]))

    def wait(self, job_id, timeout) -> GenerationJob:
        deadline, shown = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            job = GenerationJob.objects.get(pk=job_id)
            line = f"{job.status} {job.percent}%"
            if line != shown:
                self.stdout.write(
                    f"  {line}  (prompt {job.progress.get('prompt', 0) + 1}/"
                    f"{job.progress.get('prompts', 1)}, step {job.progress.get('step', 0)}/"
                    f"{job.progress.get('steps', '?')})"
                )
                shown = line
            if job.is_finished:
                return job
            time.sleep(0.5)
        raise CommandError(f"job {job_id} did not finish within {timeout:.0f}s")
