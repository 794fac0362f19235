"""Crafted input on every API door: a 4xx in the one error shape with a stable code, never a 500, nothing created.

Run on both databases: PostgreSQL's jsonb and text refuse what SQLite stores (NaN, Infinity, NUL).
"""

import json
import shutil
import uuid

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from tests.pipeline.test_lora_headers import (
    DIM,
    FFN,
    FFN2_A,
    Q_A,
    Q_B,
    file_bytes,
    lora_bytes,
    replaced,
    table,
    tiny_lora,
    without,
)
from webapp.jobs.models import GenerationJob
from webapp.loras.models import Lora
from webapp.prompts.models import PromptSet

pytestmark = pytest.mark.django_db
PROMPT = {"prompt": "a cat", "width": 128, "height": 128, "num_frames": 9, "sample_steps": 2}
JSON_DOORS = ["/v1/inference", "/api/v1/jobs/", "/api/v1/prompt-sets/", "/api/v1/auth/token"]
SUBMIT = {"v1": "/v1/inference", "jobs": "/api/v1/jobs/"}


def counts():
    return GenerationJob.objects.count(), Lora.objects.count(), PromptSet.objects.count()


def refused(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"code", "message", "details"}
    assert str(settings.VAR_DIR) not in json.dumps(error)
    return error


@pytest.fixture
def client(api):
    api.raise_request_exception = False  # a 500 is an answer to assert on, not an exception in the test
    return api


# --- nesting ------------------------------------------------------------------------------------------------------


def nest(depth: int, leaf: str = "1") -> str:
    return '{"a": ' * depth + leaf + "}" * depth


@pytest.mark.parametrize("door", JSON_DOORS)
@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="100000-arrays"),
        pytest.param("[" * 100_000, id="100000-unclosed"),
        pytest.param(nest(50_000), id="50000-objects"),
        pytest.param('{"prompts": [{"prompt": "x", "extra": ' + nest(2_000) + "}]}", id="2000-inside-a-prompt"),
        pytest.param('{"prompts": [{"prompt": "x"}], "x": ' + "[" * 40 + "]" * 40 + "}", id="40-in-an-ignored-field"),
        pytest.param('{"items": [' + "[" * 900 + "]" * 900 + "]}", id="900-below-pythons-limit"),
    ],
)
def test_deeply_nested_json_is_malformed(client, door, raw):
    before = counts()
    response = client.generic("POST", door, raw, content_type="application/json")
    if door == "/api/v1/auth/token" and raw.count("[") + raw.count("{") < 1000:
        # DRF's own view and parser: nesting Python can parse is ignored there, and nothing is stored.
        refused(response, 400, "VALIDATION_ERROR")
    else:
        refused(response, 400, "MALFORMED_REQUEST")
    assert counts() == before


@pytest.mark.parametrize("which", SUBMIT)
def test_nesting_a_request_may_need_is_accepted(client, which):
    body = {"prompts": [{**PROMPT, "extra": json.loads(nest(25))}], "note": json.loads(nest(30))}
    if which == "v1":
        body |= {"model": "wan21_14b", "loras": []}
    response = client.post(SUBMIT[which], body, format="json")
    assert response.status_code in (200, 201), response.content


def test_nesting_on_an_update_is_malformed(client):
    created = client.post("/api/v1/prompt-sets/", {"name": "s", "items": [{"prompt": "x"}]}, format="json")
    assert created.status_code == 201, created.content
    url = f"/api/v1/prompt-sets/{created.json()['id']}/"
    for method in ("PATCH", "PUT"):
        refused(client.generic(method, url, nest(10_000), content_type="application/json"), 400, "MALFORMED_REQUEST")


# --- numbers no database stores -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", SUBMIT)
@pytest.mark.parametrize("number", ["1e400", "-1e400", "1E999"])
@pytest.mark.parametrize("where", ["top", "prompt-extra", "prompt-field"])
def test_numbers_past_float_range_are_validation_errors_even_when_ignored(client, which, number, where):
    prompt = {
        "top": '{"prompt": "x"}',
        "prompt-extra": f'{{"prompt": "x", "extra": [{number}]}}',
        "prompt-field": f'{{"prompt": "x", "guidance_scale": {number}}}',
    }[where]
    odd = number if where == "top" else "0"
    raw = f'{{"model": "wan21_14b", "loras": [], "prompts": [{prompt}], "odd": {odd}}}'
    refused(client.generic("POST", SUBMIT[which], raw, content_type="application/json"), 400, "VALIDATION_ERROR")
    assert counts() == (0, 0, 0)


# --- ai-toolkit inline flags --------------------------------------------------------------------------------------

NUMERIC_FLAGS = ["w", "h", "seed", "d", "cfg", "l", "steps", "s", "m", "network_multiplier", "frames", "num_frames"]
BAD_NUMBERS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e400", "1_0", "0x10", "٣", "1.5.1", "", "9" * 3000]


def submit_flags(client, which, text):
    body = {"prompts": [{"prompt": text}], "prompt_semantics": "ai-toolkit"}
    if which == "v1":
        body |= {"model": "wan21_14b", "loras": []}
    return client.post(SUBMIT[which], body, format="json")


@pytest.mark.parametrize("which", SUBMIT)
@pytest.mark.parametrize("flag", NUMERIC_FLAGS)
def test_numeric_flags_refuse_what_is_not_a_finite_number(client, which, flag):
    for value in BAD_NUMBERS:
        error = refused(submit_flags(client, which, f"a cat --{flag} {value}"), 400, "INVALID_PROMPT_FLAG")
        assert len(error["message"]) < 200
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize("which", SUBMIT)
def test_flags_in_range_still_work(client, which):
    response = submit_flags(client, which, "a cat --w 256 --h 128 --cfg 5.5 --m -0.5 --seed -1 --frames 9 --n nan")
    assert response.status_code in (200, 201), response.content
    stored = GenerationJob.objects.get().prompts[0]
    assert (stored["width"], stored["guidance_scale"], stored["lora_scale"], stored["neg"]) == (256, 5.5, -0.5, "nan")


# --- bodies over DATA_UPLOAD_MAX_MEMORY_SIZE ----------------------------------------------------------------------


@pytest.mark.parametrize("door", JSON_DOORS)
def test_a_json_body_over_the_limit_is_413_json(client, door, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    raw = json.dumps({"prompts": [{"prompt": "x" * 20_000}], "name": "s", "items": []})
    error = refused(client.generic("POST", door, raw, content_type="application/json"), 413, "REQUEST_TOO_LARGE")
    assert error["details"] == {"max_bytes": 10_000}
    assert counts() == (0, 0, 0)


def test_a_body_over_the_real_limit_is_413_json(client):
    raw = '{"prompts": [{"prompt": "' + "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE + '"}]}'
    refused(client.generic("POST", "/api/v1/jobs/", raw, content_type="application/json"), 413, "REQUEST_TOO_LARGE")


@pytest.mark.parametrize("door", ["/v1/inference", "/api/v1/prompt-sets/", "/api/v1/loras/"])
def test_form_bodies_over_the_limit_are_413_json(client, door, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    form = client.post(door, {"name": "x" * 20_000}, format="multipart")
    refused(form, 413, "REQUEST_TOO_LARGE")
    urlencoded = client.generic("POST", door, "name=" + "x" * 20_000, content_type="application/x-www-form-urlencoded")
    refused(urlencoded, 413, "REQUEST_TOO_LARGE")


def test_a_big_file_is_not_a_big_body(client, settings):
    # The limit counts form fields, not files: a LoRA far past it uploads.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    response = client.post(
        "/api/v1/loras/", {"file": SimpleUploadedFile("l.safetensors", lora_bytes())}, format="multipart"
    )
    assert response.status_code == 201, response.content


def test_too_many_form_fields_are_malformed(client):
    raw = "&".join(f"f{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    response = client.generic("POST", "/api/v1/prompt-sets/", raw, content_type="application/x-www-form-urlencoded")
    refused(response, 400, "MALFORMED_REQUEST")


# --- LoRA uploads with crafted headers ----------------------------------------------------------------------------


def upload(client, data: bytes):
    return client.post("/api/v1/loras/", {"file": SimpleUploadedFile("crafted.safetensors", data)}, format="multipart")


def shifted() -> bytes:
    header, size = table(tiny_lora())
    names = list(header)
    header[names[1]] = {**header[names[1]], "data_offsets": header[names[0]]["data_offsets"]}
    return file_bytes(header, size)


CRAFTED = [
    pytest.param(
        lambda: lora_bytes({k: v for k, v in tiny_lora().items() if ".lora_B." in k}),
        "LORA_HEADER_INVALID",
        id="only-B",
    ),
    pytest.param(lambda: lora_bytes(without(Q_A)), "LORA_HEADER_INVALID", id="B-without-A"),
    pytest.param(lambda: lora_bytes(without(Q_B)), "LORA_HEADER_INVALID", id="A-without-B"),
    pytest.param(lambda: lora_bytes(replaced(Q_B, [DIM, 3])), "LORA_HEADER_INVALID", id="rank-mismatch"),
    pytest.param(
        lambda: lora_bytes({**replaced(Q_A, [64, DIM]), Q_B: ("BF16", [DIM, 64])}),
        "LORA_HEADER_INVALID",
        id="rank-past-the-layer",
    ),
    pytest.param(lambda: lora_bytes(replaced(FFN2_A, [4, FFN + 1])), "LORA_MODEL_MISMATCH", id="ffn2-wrong-shape"),
    pytest.param(
        lambda: lora_bytes(replaced("diffusion_model.blocks.1.cross_attn.o.lora_B.weight", [DIM + 16, 4])),
        "LORA_MODEL_MISMATCH",
        id="cross-attn-o-wrong-shape",
    ),
    pytest.param(shifted, "LORA_HEADER_INVALID", id="overlapping-offsets"),
    pytest.param(
        lambda: lora_bytes(**{Q_A: {"data_offsets": [0.0, 192.0]}}), "LORA_HEADER_INVALID", id="float-offsets"
    ),
    pytest.param(lambda: lora_bytes(extra=10), "LORA_HEADER_INVALID", id="trailing-bytes"),
    pytest.param(lambda: lora_bytes()[:-10], "LORA_FILE_TRUNCATED", id="truncated"),
    pytest.param(lambda: lora_bytes(**{Q_A: {"shape": [2**40, 2**40]}}), "LORA_HEADER_INVALID", id="shape-overflow"),
    pytest.param(lambda: lora_bytes(**{Q_A: {"shape": [4, "24"]}}), "LORA_HEADER_INVALID", id="shape-of-text"),
    pytest.param(lambda: lora_bytes(**{Q_A: {"dtype": "F128"}}), "LORA_HEADER_INVALID", id="unknown-dtype"),
    pytest.param(lambda: file_bytes('{"__metadata__": {"a": Infinity}}', 0), "LORA_HEADER_INVALID", id="infinity"),
    pytest.param(
        lambda: file_bytes('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", 0), "LORA_HEADER_INVALID", id="deep"
    ),
    pytest.param(lambda: lora_bytes(metadata={"name": "a\x00b"}), "LORA_HEADER_INVALID", id="nul-in-metadata"),
    pytest.param(
        lambda: lora_bytes({k.replace("blocks.1.", "blocks.7."): v for k, v in tiny_lora().items()}),
        "LORA_MODEL_MISMATCH",
        id="blocks-past-the-model",
    ),
]


@pytest.mark.parametrize("make,code", CRAFTED)
def test_crafted_lora_uploads_are_refused_with_their_code(client, make, code):
    error = refused(upload(client, make()), 400, code)
    assert error["details"] == {"file": "crafted.safetensors"}
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize("make,code", CRAFTED[:4])
def test_crafted_loras_under_the_root_are_refused_when_a_job_names_them(client, make, code):
    folder = settings.LORA_ROOT / f"crafted_{uuid.uuid4().hex[:10]}"
    folder.mkdir(parents=True)
    try:
        (folder / "bad.safetensors").write_bytes(make())
        body = {"model": "wan21_14b", "loras": [{"path": f"{folder.name}/bad.safetensors"}], "prompts": [PROMPT]}
        refused(client.post("/v1/inference", body, format="json"), 400, code)
    finally:
        shutil.rmtree(folder)
    assert counts() == (0, 0, 0)


@pytest.mark.parametrize(
    "metadata",
    [
        {"software": '{"name": "ai-toolkit", "version": NaN}'},
        {"software": '{"version": Infinity, "repo": 1e400}'},
        {"software": '{"version": "0.9\\u0000"}'},
        {"software": "[" * 100_000},
        {"ss_tag_frequency": '{"1_x": {"sks": Infinity, "a\\u0000": 3, "man": 2}}'},
        {"training_info": '{"step": NaN, "epoch": ' + "9" * 5000 + "}"},
    ],
    ids=["nan", "infinity", "nul-escape", "deep", "tag-frequency", "training-info"],
)
def test_odd_metadata_uploads_and_is_stored_on_every_database(client, metadata):
    response = upload(client, lora_bytes(metadata=metadata))
    assert response.status_code == 201, response.content
    lora = Lora.objects.get()
    json.dumps(lora.info, allow_nan=False)
    assert "\x00" not in json.dumps(lora.info, ensure_ascii=False)
