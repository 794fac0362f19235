"""What one request can make the server store or send back stays bounded: a LoRA's header metadata in
list and detail answers, and the request kept with a job (only the fields the API declares)."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from safetensors.torch import load_file, save_file

from webapp.jobs.models import GenerationJob
from webapp.loras.api import LoraSerializer
from webapp.loras.models import Lora
from webapp.loras.services import LIST_ITEMS, METADATA_CHARS, METADATA_VALUE_CHARS, lora_resolve
from webapp.prompts.services import prompt_set_create

pytestmark = pytest.mark.django_db
LORAS, JOBS, V1 = "/api/v1/loras/", "/api/v1/jobs/", "/v1/inference"
PROMPT = {"prompt": "  a cat  ", "width": 128, "height": 128, "num_frames": 9, "sample_steps": 2}
MiB = 2**20


def padded_lora(source, path, *, seed: int, pad_bytes: int, keys: int = 4) -> bytes:
    """A real LoRA whose header metadata carries `pad_bytes` more, spread over `keys` keys."""
    tensors = load_file(str(source))
    tensors[next(iter(tensors))] += seed  # other bytes, so each upload is a LoRA of its own
    metadata = {"ss_output_name": f"padded{seed}", "software": json.dumps({"name": "ai-toolkit", "version": "1"})}
    metadata |= {f"pad{i}": chr(ord("a") + i) * (pad_bytes // keys) for i in range(keys)}
    save_file(tensors, str(path), metadata=metadata)
    return path.read_bytes()


def test_the_lora_list_leaves_header_metadata_out_and_the_detail_caps_it(api, lora_files, tmp_path):
    ids = []
    for seed in range(3):
        data = padded_lora(lora_files["a"], tmp_path / f"p{seed}.safetensors", seed=seed + 1, pad_bytes=2 * MiB)
        response = api.post(LORAS, {"file": SimpleUploadedFile(f"p{seed}.safetensors", data)}, format="multipart")
        assert response.status_code == 201, response.content[:300]
        assert len(response.content) < 100_000  # the upload's answer is a detail: capped
        ids.append(response.json()["id"])

    listed = api.get(LORAS)
    assert listed.status_code == 200 and len(listed.content) < 30_000, len(listed.content)
    for item in listed.json()["results"]:
        assert "metadata" not in item["info"]
        assert item["info"]["key_format"] == "ai-toolkit" and item["info"]["rank"] == 4
        assert item["info"]["software"] == {"name": "ai-toolkit", "version": "1"}

    detail = api.get(f"{LORAS}{ids[0]}/")
    assert detail.status_code == 200 and len(detail.content) < 100_000, len(detail.content)
    info = detail.json()["info"]
    assert info["metadata_truncated"] is True
    assert info["metadata"]["ss_output_name"] == "padded1"
    assert sum(len(k) + len(v) for k, v in info["metadata"].items()) <= METADATA_CHARS
    assert all(len(v) <= METADATA_VALUE_CHARS for v in info["metadata"].values())
    stored = Lora.objects.get(pk=ids[0]).info  # the row holds the bounded header too, not 2 MiB
    assert len(json.dumps(stored)) < 2 * METADATA_CHARS and stored["metadata_truncated"] is True


def test_a_small_header_is_shown_whole_in_the_detail(api, lora_files):
    lora = lora_resolve(ref="job_a/job_a.safetensors")
    info = api.get(f"{LORAS}{lora.pk}/").json()["info"]
    assert info["metadata"] == lora.info["metadata"] and info["metadata_truncated"] is False
    assert info["trigger_words"] == lora.info["trigger_words"] and info["num_blocks"] == lora.num_blocks


@pytest.mark.parametrize("many", [False, True])
def test_every_header_fact_is_bounded(many):
    """A crafted header: thousands of modules, long names and values, a huge software record."""
    lora = Lora(
        name="crafted",
        sha256="0" * 64,
        relative_path="crafted.safetensors",
        target_modules=[f"m{i}" * 50 for i in range(5000)],
        info={
            "key_format": "ai-toolkit",
            "rank": 4,
            "dtype": "x" * 10_000,
            "target_modules": [f"m{i}" * 50 for i in range(5000)],
            "trigger_words": ["w" * 10_000] * 100,
            "software": {"name": "n" * 10_000, "version": "1", "junk": "j" * MiB},
            "unknown": "u" * MiB,
            "metadata": {f"k{i}" * 1000: "v" * 10_000 for i in range(1000)},
        },
    )
    data = (LoraSerializer([lora], many=True).data[0]) if many else LoraSerializer(lora).data
    size = len(json.dumps(data))
    assert size < (40_000 if many else 120_000), size
    info = data["info"]
    assert "unknown" not in info and set(info["software"]) == {"name", "version"}
    assert len(data["target_modules"]) == len(info["target_modules"]) == LIST_ITEMS
    assert ("metadata" in info) is not many


# --- the request kept with a job ------------------------------------------------------------------------------


def test_the_resource_api_keeps_only_declared_fields_of_a_request(api):
    body = {
        "prompts": [{**PROMPT, "pad": "x" * MiB}],
        "loras": [],
        "priority": 2,
        "pad": "y" * (4 * MiB),
        "extra": {"nested": ["z" * 1000] * 100},
    }
    response = api.post(JOBS, body, format="json")
    assert response.status_code == 201, response.content[:300]
    job = GenerationJob.objects.get()
    assert job.request == {"prompts": [PROMPT], "loras": [], "priority": 2}  # as sent: "  a cat  " untrimmed
    assert "request" not in response.json()


def test_the_resource_api_keeps_a_prompt_sets_request_small(api):
    prompt_set = prompt_set_create(owner=None, name="s", items=[{"prompt": "a cat"}])
    body = {
        "prompt_set": prompt_set.pk,
        "trigger_word": "sks",
        "pad": "p" * MiB,
        "loras": [{"lora": "job_a/job_a.safetensors", "pad": "q" * MiB}],
    }
    assert api.post(JOBS, body, format="json").status_code == 201
    stored = GenerationJob.objects.get().request
    assert stored == {
        "prompt_set": prompt_set.pk,
        "trigger_word": "sks",
        "loras": [{"lora": "job_a/job_a.safetensors"}],
    }


def test_the_compatible_api_keeps_only_declared_fields_and_never_the_token(api):
    body = {
        "model": "wan21_14b",
        "loras": [{"path": "my_lora_job/my_lora.safetensors", "network_multiplier": 0.5, "pad": "l" * MiB}],
        "prompts": [{**PROMPT, "sampler": "ddim", "pad": "x" * MiB}],
        "hf_token": "hf_secret_value",
        "pad": "y" * (4 * MiB),
    }
    response = api.post(V1, body, format="json")
    assert response.status_code == 200, response.content[:300]
    stored = GenerationJob.objects.get().request
    assert stored == {
        "model": "wan21_14b",
        "loras": [{"path": "my_lora_job/my_lora.safetensors", "network_multiplier": 0.5}],
        "prompts": [{**PROMPT, "sampler": "ddim"}],
    }
    assert len(json.dumps(stored)) < 1000
