"""The ai-toolkit-inference API: the same requests, defaults, statuses and error shape."""

import json
import uuid
from pathlib import Path

import pytest

from webapp.jobs.models import GenerationJob

MINIMAL = json.loads((Path(__file__).resolve().parents[2] / "examples" / "minimal_request.json").read_text())
pytestmark = pytest.mark.django_db


def submit(api, body):
    return api.post("/v1/inference", body, format="json")


def only_prompt(api, *prompts, **top):
    body = {
        "model": "wan21_14b",
        "loras": [],
        "prompts": [{"prompt": p} if isinstance(p, str) else p for p in prompts],
        **top,
    }
    response = submit(api, body)
    assert response.status_code == 200, response.json()
    return GenerationJob.objects.get(pk=response.json()["request_id"])


def test_minimal_request_is_accepted_verbatim(api):
    response = submit(api, MINIMAL)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["status"] == "queued"
    assert body["status_url"].endswith(f"/v1/requests/{body['request_id']}/status")
    assert body["result_url"].endswith(f"/v1/requests/{body['request_id']}/result")
    job = GenerationJob.objects.get(pk=body["request_id"])
    assert job.prompts[0] == {
        "prompt": "sks a photo of a person",
        "neg": "",
        "width": 1024,
        "height": 1024,
        "num_frames": 41,
        "sample_steps": 25,
        "guidance_scale": 4.0,
        "seed": 42,
        "fps": 16,
        "lora_scale": None,
    }
    assert [(jl.name, jl.multiplier) for jl in job.job_loras.all()] == [("my_lora_job/my_lora", 1.0)]

    status = api.get(f"/v1/requests/{job.id}/status").json()
    assert status["status"] == "in_queue" and status["error"] is None and status["started_at"] is None
    result = api.get(f"/v1/requests/{job.id}/result").json()
    assert result["outputs"] == {"images": [], "videos": []}
    assert result["metadata"]["model"] == "wan21_14b"


def test_hf_token_is_accepted_and_never_stored(api):
    response = submit(api, {**MINIMAL, "hf_token": "hf_secret_value"})
    assert response.status_code == 200
    job = GenerationJob.objects.get(pk=response.json()["request_id"])
    assert "hf_secret_value" not in json.dumps(job.request)


def test_defaults_are_the_wan21_14b_ones(api):
    job = only_prompt(api, "a cat", "a dog")
    first, second = job.prompts
    assert (first["width"], first["height"], first["num_frames"], first["fps"]) == (1024, 1024, 41, 16)
    assert (first["sample_steps"], first["guidance_scale"], first["neg"]) == (25, 4.0, "")
    assert (first["seed"], second["seed"]) == (42, 43)


def test_size_snaps_down_to_16_and_frames_to_4k_plus_1(api):
    job = only_prompt(
        api,
        {"prompt": "x", "width": 1000, "height": 479, "num_frames": 40},
        {"prompt": "y", "num_frames": 43},
        {"prompt": "z", "num_frames": 81, "width": 64},
    )
    assert (job.prompts[0]["width"], job.prompts[0]["height"], job.prompts[0]["num_frames"]) == (992, 464, 41)
    assert job.prompts[1]["num_frames"] == 41
    assert (job.prompts[2]["num_frames"], job.prompts[2]["width"]) == (81, 64)


def test_seed_minus_one_draws_a_reported_seed(api):
    job = only_prompt(api, {"prompt": "x", "seed": -1}, {"prompt": "y", "seed": 7})
    assert 0 <= job.prompts[0]["seed"] <= 2**31 - 1
    assert job.prompts[1]["seed"] == 7


def test_trigger_word_replacement(api):
    job = only_prompt(
        api, "[trigger] on a beach, [trigger]", {"prompt": "[trigger] b", "trigger_word": "zzz"}, trigger_word="sks"
    )
    assert job.prompts[0]["prompt"] == "sks on a beach, sks"
    assert job.prompts[1]["prompt"] == "zzz b"
    job = only_prompt(api, "[trigger] kept")
    assert job.prompts[0]["prompt"] == "[trigger] kept"


@pytest.mark.parametrize(
    "field,value,code",
    [
        ("width", 63, "min_value"),
        ("width", 4097, "max_value"),
        ("height", 63, "min_value"),
        ("height", 4097, "max_value"),
        ("sample_steps", 0, "min_value"),
        ("sample_steps", 151, "max_value"),
        ("guidance_scale", -0.5, "min_value"),
        ("guidance_scale", 20.5, "max_value"),
        ("seed", -2, "min_value"),
        ("num_frames", 0, "min_value"),
        ("num_frames", 1001, "max_value"),
        ("fps", 0, "min_value"),
        ("fps", 121, "max_value"),
        ("width", "wide", "invalid"),
        ("prompt", None, "null"),
    ],
)
def test_out_of_range_prompt_field_is_rejected_with_its_code(api, field, value, code):
    prompt = {**MINIMAL["prompts"][0], field: value}
    response = submit(api, {**MINIMAL, "prompts": [prompt]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert error["details"][f"prompts[0].{field}"][0]["code"] == code
    assert GenerationJob.objects.count() == 0


@pytest.mark.parametrize("multiplier,code", [(2.01, "max_value"), (-2.01, "min_value"), ("x", "invalid")])
def test_out_of_range_multiplier_is_rejected(api, multiplier, code):
    body = {**MINIMAL, "loras": [{"path": "my_lora_job/my_lora.safetensors", "network_multiplier": multiplier}]}
    error = submit(api, body).json()["error"]
    assert error["details"]["loras[0].network_multiplier"][0]["code"] == code


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({**MINIMAL, "model": "sdxl"}, 400, "UNKNOWN_MODEL"),
        ({**MINIMAL, "loras": [{"path": "nope/none.safetensors"}]}, 404, "LORA_NOT_FOUND"),
        ({**MINIMAL, "loras": [{"path": "../../etc/passwd"}]}, 404, "LORA_NOT_FOUND"),
        ({**MINIMAL, "prompts": []}, 400, "VALIDATION_ERROR"),
        ({k: v for k, v in MINIMAL.items() if k != "model"}, 400, "VALIDATION_ERROR"),
        ({k: v for k, v in MINIMAL.items() if k != "loras"}, 400, "VALIDATION_ERROR"),
    ],
)
def test_bad_requests_get_a_stable_code_and_create_nothing(api, body, status, code):
    response = submit(api, body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert GenerationJob.objects.count() == 0


def test_malformed_json_is_a_4xx(api):
    response = api.generic("POST", "/v1/inference", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "MALFORMED_REQUEST"


def test_unknown_request_id_is_request_not_found(api):
    for path in (f"/v1/requests/{uuid.uuid4()}/status", "/v1/requests/not-a-uuid/result"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "REQUEST_NOT_FOUND"


def test_cancel_a_queued_request(api):
    request_id = submit(api, MINIMAL).json()["request_id"]
    assert api.post(f"/v1/requests/{request_id}/cancel").json()["status"] == "canceled"
    assert api.post(f"/v1/requests/{request_id}/cancel").json()["status"] == "canceled"
    assert api.get(f"/v1/requests/{request_id}/status").json()["status"] == "canceled"


def test_health_models_and_auth(client, api):
    assert client.get("/health").json() == {"status": "healthy"}
    response = client.post("/v1/inference", MINIMAL, content_type="application/json")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "NOT_AUTHENTICATED"
    assert [m["id"] for m in api.get("/v1/models").json()["models"]] == ["wan21_14b"]


def test_a_size_the_deployments_model_cannot_render_is_refused_at_submit(api, settings, tmp_path):
    """A checkpoint whose rotary range covers 32 positions renders at most 512 px and 125 frames."""
    import json

    from webapp.core import catalog

    (tmp_path / "transformer").mkdir()
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"rope_max_seq_len": 32, "num_layers": 2}))
    settings.WAN_MODEL_PATH = str(tmp_path)
    catalog._transformer_config.cache_clear()
    try:
        body = {**MINIMAL, "loras": []}  # the verbatim request asks for 1024x1024
        response = api.post("/v1/inference", body, format="json")
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "UNSUPPORTED_SIZE" and error["details"]["max_width"] == 512
        assert error["details"]["max_num_frames"] == 125 and error["details"]["fields"] == ["width", "height"]
        small = {**body, "prompts": [{**body["prompts"][0], "width": 512, "height": 512}]}
        assert api.post("/v1/inference", small, format="json").status_code == 200
    finally:
        catalog._transformer_config.cache_clear()


def test_the_verbatim_request_is_accepted_on_the_default_model(api):
    """The tiny checkpoint `make demo` writes places 1024x1024x41 (and any size the API accepts)."""
    response = api.post("/v1/inference", MINIMAL, format="json")
    assert response.status_code == 200, response.json()
