import json, pytest
from django.conf import settings
from tests.conftest import TINY_SHAPE
from webapp.jobs.models import GenerationJob
from webapp.loras.models import Lora
from workers.pipeline.checkpoints import write_aitoolkit_lora
pytestmark = pytest.mark.django_db

def show(r):
    print(r.status_code, r.content[:300])

def test_probe(api, tmp_path):
    api.raise_request_exception = False
    M = {"model": "wan21_14b", "loras": [], "prompts": [{"prompt": "x"}]}
    show(api.post("/v1/inference", {**M, "loras": [{"path": "job_a/\u0000.safetensors"}]}, format="json"))
    show(api.post("/v1/inference", {**M, "model": 5}, format="json"))
    show(api.post("/api/v1/jobs/", {"model": 5, "prompts": [{"prompt": "x"}]}, format="json"))
    show(api.generic("POST", "/v1/inference", '{"model":"wan21_14b","loras":[],"prompts":[{"prompt":"\\ud800"}]}', content_type="application/json"))
    show(api.generic("POST", "/v1/inference", '{"model":"wan21_14b","loras":[{"path":"\\ud800"}],"prompts":[{"prompt":"x"}]}', content_type="application/json"))
    show(api.generic("POST", "/v1/inference", "", content_type="application/json"))
    show(api.generic("POST", "/api/v1/jobs/", "", content_type="application/json"))
    show(api.post("/v1/inference", [M], format="json"))
    show(api.generic("POST", "/v1/inference", "null", content_type="application/json"))
    root = settings.LORA_ROOT / "probe"
    for i, kw in enumerate([dict(trigger_words=("t" * 300,)), dict(software_version="v" * 60), dict(training_step=-5),
                            dict(training_step=2**40), dict(training_step="abc")]):
        write_aitoolkit_lora(root / f"p{i}.safetensors", shape=TINY_SHAPE, seed=100 + i, **kw)
        show(api.post("/v1/inference", {**M, "loras": [{"path": f"probe/p{i}.safetensors"}]}, format="json"))
    long = "d" * 150 + "/" + "f" * 60 + ".safetensors"
    write_aitoolkit_lora(settings.LORA_ROOT / long, shape=TINY_SHAPE, seed=120)
    show(api.post("/v1/inference", {**M, "loras": [{"path": long}]}, format="json"))
    print(Lora.objects.count(), GenerationJob.objects.count())
    from rest_framework.test import APIClient
    c = APIClient()
    show(c.get("/api/schema/")); show(c.get("/api/docs/")); show(c.get("/api/v1/"))
