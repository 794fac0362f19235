"""Hostile or odd input through /v1/inference and /api/v1/jobs/: a 4xx with a stable code, and nothing created."""

import io
import pickle
import shutil
import uuid

import pytest
import torch
from django.conf import settings

from tests.conftest import TINY_SHAPE
from webapp.jobs.models import GenerationJob
from webapp.loras.models import Lora
from workers.pipeline.checkpoints import write_aitoolkit_lora
from workers.pipeline.shapes import WanShape

URL = {"v1": "/v1/inference", "jobs": "/api/v1/jobs/"}
OK = {"v1": 200, "jobs": 201}
PROMPT = {"prompt": "a cat", "width": 128, "height": 128, "num_frames": 9, "sample_steps": 2}
BOTH = pytest.mark.parametrize("which", ["v1", "jobs"])
pytestmark = pytest.mark.django_db


def body(which, loras=(), prompts=(PROMPT,), **top):
    """A request in either API's schema; loras are (ref, multiplier) pairs."""
    if which == "v1":
        stack = [{"path": ref, "network_multiplier": m} for ref, m in loras]
        return {"model": "wan21_14b", "loras": stack, "prompts": list(prompts), **top}
    return {"loras": [{"lora": ref, "multiplier": m} for ref, m in loras], "prompts": list(prompts), **top}


def counts():
    return GenerationJob.objects.count(), Lora.objects.count()


def refused(api, which, status, code, data=None, **kw):
    before = counts()
    response = api.post(URL[which], body(which, **kw) if data is None else data, format="json")
    assert response.status_code == status, response.content
    assert response.json()["error"]["code"] == code
    assert counts() == before
    return response.json()["error"]


def accepted(api, which, **kw) -> GenerationJob:
    response = api.post(URL[which], body(which, **kw), format="json")
    assert response.status_code == OK[which], response.content
    return GenerationJob.objects.get(pk=response.json()["request_id" if which == "v1" else "id"])


@pytest.fixture
def root_dir():
    """A fresh folder under LORA_ROOT: (path, name relative to LORA_ROOT); removed afterwards."""
    path = settings.LORA_ROOT / f"t_{uuid.uuid4().hex[:10]}"
    path.mkdir(parents=True)
    yield path, path.name
    shutil.rmtree(path)


# --- LoRA paths -----------------------------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    "path",
    [
        "../x.safetensors",
        "../../etc/passwd",
        "/etc/passwd",
        "job_a/../../x.safetensors",
        "..%2f..%2fetc%2fpasswd",
        "job_a/%2e%2e/x.safetensors",
        "job_a",
        ".",
    ],
)
def test_paths_escaping_or_missing_under_the_root_are_not_found(api, which, path):
    refused(api, which, 404, "LORA_NOT_FOUND", loras=[(path, 1.0)])


@BOTH
def test_nul_byte_in_a_path_is_a_validation_error(api, which):
    # Refused by DRF's CharField before lookup (a 400 rather than LORA_NOT_FOUND); nothing reaches the database.
    error = refused(api, which, 400, "VALIDATION_ERROR", loras=[("job_a/\u0000.safetensors", 1.0)])
    assert [p["code"] for p in error["details"]["loras[0].path" if which == "v1" else "loras[0].lora"]] == [
        "null_characters_not_allowed"
    ]


@BOTH
@pytest.mark.parametrize(
    "raw,where,code",
    [
        ('{"prompts": [{"prompt": "a\\u0000b"}]}', "prompts[0].prompt", "null_characters_not_allowed"),
        ('{"prompts": [{"prompt": "a\\ud83db"}]}', "prompts[0].prompt", "surrogate_characters_not_allowed"),
        ('{"x\\u0000": 1, "prompts": [{"prompt": "x"}]}', "request", "null_characters_not_allowed"),
        (
            '{"prompts": [{"prompt": "x", "extra": {"k": ["\\u0000"]}}]}',
            "prompts[0].extra.k[0]",
            "null_characters_not_allowed",
        ),
    ],
)
def test_text_the_database_cannot_store_is_refused_even_in_ignored_fields(api, which, raw, where, code):
    # The request is kept verbatim with its job, so an ignored key counts as much as a prompt.
    response = api.generic("POST", URL[which], raw, content_type="application/json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert [p["code"] for p in error["details"][where]] == [code]
    assert counts() == (0, 0)


@BOTH
def test_symlinks_leaving_the_root_are_not_found(api, which, root_dir, tmp_path):
    folder, rel = root_dir
    outside = write_aitoolkit_lora(tmp_path / "outside" / "real.safetensors", shape=TINY_SHAPE, seed=71)
    (folder / "link.safetensors").symlink_to(outside)
    (folder / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    refused(api, which, 404, "LORA_NOT_FOUND", loras=[(f"{rel}/link.safetensors", 1.0)])
    refused(api, which, 404, "LORA_NOT_FOUND", loras=[(f"{rel}/linked_dir/real.safetensors", 1.0)])


@BOTH
def test_symlink_inside_the_root_to_a_file_inside_is_fine(api, which, root_dir):
    folder, rel = root_dir
    target = write_aitoolkit_lora(folder / "real" / "real.safetensors", shape=TINY_SHAPE, seed=72)
    (folder / "link.safetensors").symlink_to(target)
    job = accepted(api, which, loras=[(f"{rel}/link.safetensors", 0.5)])
    assert Lora.objects.get().relative_path == f"{rel}/link.safetensors"
    assert [(jl.name, jl.multiplier) for jl in job.job_loras.all()] == [(f"{rel}/link", 0.5)]


@BOTH
@pytest.mark.parametrize(
    "url", ["https://example.com/x.safetensors", "file:///etc/passwd", "ftp://example.com/x.safetensors"]
)
def test_lora_urls_are_off_by_default(api, which, url):
    assert settings.LORA_URL_ALLOWED_HOSTS == []
    refused(api, which, 400, "LORA_URL_DISABLED", loras=[(url, 1.0)])


@BOTH
@pytest.mark.parametrize(
    "url,code",
    [
        ("file:///etc/passwd", "LORA_URL_NOT_HTTPS"),
        ("ftp://example.com/x.safetensors", "LORA_URL_NOT_HTTPS"),
        ("http://example.com/x.safetensors", "LORA_URL_NOT_HTTPS"),
        ("https://user:pw@example.com/x.safetensors", "LORA_URL_INVALID"),
        ("https://example.com/x.bin", "LORA_URL_INVALID"),
        ("https://evil.example.net/x.safetensors", "LORA_URL_HOST_NOT_ALLOWED"),
    ],
)
def test_lora_urls_refused_before_any_network_when_enabled(api, which, url, code, settings):
    settings.LORA_URL_ALLOWED_HOSTS = ["example.com"]
    refused(api, which, 400, code, loras=[(url, 1.0)])


# --- hostile files under LORA_ROOT ----------------------------------------------------------------------------


def _torch_zip() -> bytes:
    buffer = io.BytesIO()
    torch.save({"a": torch.zeros(2)}, buffer)
    return buffer.getvalue()


def _lora(tmp, **kw) -> bytes:
    return write_aitoolkit_lora(tmp / "made.safetensors", **{"shape": TINY_SHAPE, "seed": 73, **kw}).read_bytes()


@BOTH
@pytest.mark.parametrize(
    "make,code",
    [
        pytest.param(lambda tmp: pickle.dumps({"a": [1.0]}, protocol=2), "LORA_NOT_SAFETENSORS", id="pickle"),
        pytest.param(lambda tmp: _torch_zip(), "LORA_NOT_SAFETENSORS", id="torch-zip"),
        pytest.param(lambda tmp: b"", "LORA_FILE_TRUNCATED", id="empty"),
        pytest.param(lambda tmp: _lora(tmp)[:-100], "LORA_FILE_TRUNCATED", id="truncated"),
        pytest.param(
            lambda tmp: _lora(tmp, shape=WanShape(dim=5120, ffn_dim=13824, num_layers=2), rank=1),
            "LORA_MODEL_MISMATCH",
            id="made-for-14b",
        ),
    ],
)
def test_hostile_file_under_the_root_is_refused_with_its_code(api, which, root_dir, tmp_path, make, code):
    folder, rel = root_dir
    (folder / "bad.safetensors").write_bytes(make(tmp_path))
    refused(api, which, 400, code, loras=[(f"{rel}/bad.safetensors", 1.0)])


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"trigger_words": ("t" * 300,)}, id="trigger-word-300-chars"),
        pytest.param({"software_version": "v" * 60}, id="software-version-60-chars"),
        pytest.param({"training_step": 2**40}, id="training-step-2**40"),
        pytest.param({"training_step": "abc"}, id="training-step-not-a-number"),
        pytest.param({"training_step": -5}, id="training-step-negative"),
    ],
)
def test_hostile_metadata_under_the_root_is_not_a_server_error(api, root_dir, fields):
    folder, rel = root_dir
    write_aitoolkit_lora(folder / "meta.safetensors", shape=TINY_SHAPE, seed=74, **fields)
    api.raise_request_exception = False
    response = api.post(URL["v1"], body("v1", loras=[(f"{rel}/meta.safetensors", 1.0)]), format="json")
    assert response.status_code == 200 or (
        response.status_code == 400 and response.json()["error"]["code"].startswith("LORA_")
    ), response.content


def test_long_relative_path_under_the_root_is_not_a_server_error(api, root_dir):
    folder, rel = root_dir
    relative = f"{rel}/{'d' * 150}/{'f' * 60}.safetensors"
    write_aitoolkit_lora(settings.LORA_ROOT / relative, shape=TINY_SHAPE, seed=75)
    api.raise_request_exception = False
    response = api.post(URL["v1"], body("v1", loras=[(relative, 1.0)]), format="json")
    assert response.status_code in (200, 400), response.content


# --- prompts and request shape --------------------------------------------------------------------------------

UNICODE = [
    "🎬 a cat 🐱‍👤 in the rain 🌧️",
    "שלום עולם — مرحبا بالعالم",
    "Z\u0351\u0352e\u0301 n\u0303 a\u0308\u0308",
    "\u202eoverride\u202c and zero\u200bwidth",
    "  leading and trailing  ",
]


@BOTH
def test_unicode_prompts_are_stored_unchanged(api, which):
    job = accepted(api, which, prompts=[{**PROMPT, "prompt": text} for text in UNICODE])
    assert [p["prompt"] for p in job.prompts] == UNICODE


@BOTH
def test_prompt_longer_than_the_limit_is_refused(api, which):
    accepted(api, which, prompts=[{**PROMPT, "prompt": "x" * settings.PROMPT_MAX_CHARS}])
    too_long = [{**PROMPT, "prompt": "x" * (settings.PROMPT_MAX_CHARS + 1)}]
    error = refused(api, which, 400, "VALIDATION_ERROR", prompts=too_long)
    assert error["details"]["prompts[0].prompt"][0]["code"] == "max_length"


@BOTH
def test_too_many_prompts_are_refused(api, which):
    assert settings.JOB_MAX_PROMPTS < 1000
    accepted(api, which, prompts=[PROMPT] * settings.JOB_MAX_PROMPTS)
    error = refused(api, which, 400, "VALIDATION_ERROR", prompts=[PROMPT] * 1000)
    assert error["details"]["prompts"][0]["code"] == "max_length"


@pytest.mark.parametrize(
    "which,field,value,code",
    [
        # DRF's CharField coerces a JSON number to a string, so an int model is an unknown model, not a type error.
        ("v1", "model", 5, "UNKNOWN_MODEL"),
        ("jobs", "model", 5, "UNKNOWN_MODEL"),
        ("v1", "model", ["wan21_14b"], "VALIDATION_ERROR"),
        ("jobs", "model", {"id": 1}, "VALIDATION_ERROR"),
        ("v1", "loras", {"path": "job_a/job_a.safetensors"}, "VALIDATION_ERROR"),
        ("jobs", "loras", {"lora": "job_a/job_a.safetensors"}, "VALIDATION_ERROR"),
        ("v1", "prompts", "a cat", "VALIDATION_ERROR"),
        ("jobs", "prompts", "a cat", "VALIDATION_ERROR"),
        ("v1", "trigger_word", ["sks"], "VALIDATION_ERROR"),
        ("jobs", "trigger_word", ["sks"], "VALIDATION_ERROR"),
        ("v1", "priority", "high", "VALIDATION_ERROR"),
        ("jobs", "priority", [1], "VALIDATION_ERROR"),
        ("v1", "scheduler", ["euler"], "VALIDATION_ERROR"),
        ("jobs", "webp", "maybe", "VALIDATION_ERROR"),
        ("v1", "prompt_semantics", 3, "VALIDATION_ERROR"),
        ("v1", "hf_token", ["x"], "VALIDATION_ERROR"),
        ("jobs", "prompt_set", "one", "VALIDATION_ERROR"),
        ("jobs", "prompts", [{"prompt": "x", "seed": 10**30}], "VALIDATION_ERROR"),
    ],
)
def test_wrong_types_for_top_level_fields_are_refused(api, which, field, value, code):
    refused(api, which, 400, code, data={**body(which), field: value})


@BOTH
@pytest.mark.parametrize(
    "raw,code",
    [
        ("[]", "VALIDATION_ERROR"),
        ('[{"prompt": "x"}]', "VALIDATION_ERROR"),
        ("null", "VALIDATION_ERROR"),
        ('"text"', "VALIDATION_ERROR"),
        ("42", "VALIDATION_ERROR"),
        ("", "VALIDATION_ERROR"),
        ('{"prompts": [{"prompt": NaN}]}', "MALFORMED_REQUEST"),
        (
            '{"model": "wan21_14b", "loras": [], "prompts": [{"prompt": "x", "guidance_scale": 1e400}]}',
            "VALIDATION_ERROR",
        ),
    ],
)
def test_odd_raw_bodies_are_400(api, which, raw, code):
    response = api.generic("POST", URL[which], raw, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == code
    assert counts() == (0, 0)


@BOTH
def test_unknown_top_level_fields_are_ignored(api, which, user, django_user_model):
    other = django_user_model.objects.create_user(username="mallory", password="pw-mallory-1")
    job = accepted(
        api,
        which,
        foo=1,
        owner=other.pk,
        status="succeeded",
        attempts=7,
        worker="evil",
        id=str(uuid.uuid4()),
        error_code="X",
    )
    assert (job.owner, job.status, job.attempts, job.worker, job.error_code) == (user, "queued", 0, "", "")


@BOTH
def test_more_than_four_loras_are_refused(api, which):
    stack = [(f"job_{i}/job_{i}.safetensors", 1.0) for i in "abcde"]
    error = refused(api, which, 400, "VALIDATION_ERROR", loras=stack)
    assert error["details"]["loras"][0]["code"] == "max_length"


# --- edges of every range are accepted --------------------------------------------------------------------------


@BOTH
@pytest.mark.parametrize(
    "field,value,stored",
    [
        ("width", 64, 64),
        ("width", 4096, 4096),
        ("height", 64, 64),
        ("height", 4096, 4096),
        ("sample_steps", 1, 1),
        ("sample_steps", 150, 150),
        ("guidance_scale", 0, 0.0),
        ("guidance_scale", 20, 20.0),
        ("seed", 2**63 - 1, 2**63 - 1),
        ("num_frames", 1, 1),
        ("num_frames", 1000, 997),
        ("fps", 1, 1),
        ("fps", 120, 120),
    ],
)
def test_edges_of_prompt_ranges_are_accepted(api, which, field, value, stored):
    # Frames snap to 4k+1 as diffusers' WanPipeline does, never past the limit: the maximum 1000 renders 997.
    job = accepted(api, which, prompts=[{**PROMPT, field: value}])
    assert job.prompts[0][field] == stored


@BOTH
def test_seed_minus_one_and_multiplier_edges_are_accepted(api, which):
    job = accepted(
        api,
        which,
        prompts=[{**PROMPT, "seed": -1}],
        loras=[("job_a/job_a.safetensors", -2.0), ("job_b/job_b.safetensors", 2.0)],
    )
    assert 0 <= job.prompts[0]["seed"] <= 2**31 - 1
    assert [jl.multiplier for jl in job.job_loras.all()] == [-2.0, 2.0]


# --- speed ----------------------------------------------------------------------------------------------------


@BOTH
def test_speed_is_exact_unless_asked_and_fast_is_stored(api, which):
    assert accepted(api, which).speed == "exact"
    assert accepted(api, which, speed="fast").speed == "fast"


@BOTH
@pytest.mark.parametrize("value", ["turbo", "", None, 1, ["fast"]])
def test_unknown_speed_is_refused(api, which, value):
    refused(api, which, 400, "VALIDATION_ERROR", speed=value)


@BOTH
def test_fast_and_step_cache_together_are_refused(api, which):
    error = refused(api, which, 400, "OPTIONS_CONFLICT", speed="fast", step_cache=0.1)
    assert "speed" in error["details"]


@pytest.mark.parametrize(
    "query", ["lora=99999999999999999999", "owner=99999999999999999999", "prompt_set=99999999999999999999"]
)
def test_an_id_past_64_bits_is_a_400_on_every_database(api, query):
    response = api.get(f"/api/v1/jobs/?{query}")
    assert response.status_code in (200, 400) and response.status_code != 500
    if response.status_code == 400:
        assert response.json()["error"]["code"] in ("VALIDATION_ERROR",)


@pytest.mark.parametrize(
    "text,code",
    [
        ('{"model": "nope", "prompts": [{"prompt": "x"}], "loras": []}', "UNKNOWN_MODEL"),
        ("not json", "BAD_REQUEST_FILE"),
        ("[1, 2]", "BAD_REQUEST_FILE"),
        ('{"model": "wan21_14b", "prompts": [{"prompt": "x", "fps": 0}], "loras": []}', "VALIDATION_ERROR"),
    ],
)
def test_demo_with_a_bad_request_says_its_code_without_a_traceback(tmp_path, tiny_model, text, code):
    from django.core.management import CommandError, call_command

    request = tmp_path / "request.json"
    request.write_text(text)
    with pytest.raises(CommandError, match=code):
        call_command("demo", request=request)
