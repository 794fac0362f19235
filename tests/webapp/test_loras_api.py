"""/api/v1/loras/: upload with header metadata, dedup, list/detail/delete, refusals by code, and import_loras."""

import io
import pickle
import struct

import pytest
import torch
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from safetensors.torch import load_file, save_file

from tests.conftest import TINY_SHAPE
from webapp.loras.models import Lora
from workers.pipeline.checkpoints import WanShape, write_aitoolkit_lora, write_kohya_lora

URL = "/api/v1/loras/"
pytestmark = pytest.mark.django_db


def upload(api, data: bytes, filename="lora.safetensors", **fields):
    return api.post(URL, {"file": SimpleUploadedFile(filename, data), **fields}, format="multipart")


@pytest.fixture
def lora_bytes(tmp_path) -> bytes:
    path = write_aitoolkit_lora(
        tmp_path / "beach_job.safetensors",
        shape=TINY_SHAPE,
        rank=8,
        seed=5,
        software_version="0.9.7",
        training_step=2500,
        trigger_words=("ohwx", "beach"),
    )
    return path.read_bytes()


def test_upload_reports_the_header_metadata(api, user, lora_bytes):
    response = upload(api, lora_bytes, "beach_job.safetensors")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["name"], body["owner"], body["base_model"]) == ("beach_job", "alice", "wan21_14b")
    assert (body["key_format"], body["rank"], body["num_blocks"], body["hidden_size"]) == ("ai-toolkit", 8, 2, 24)
    assert (body["software_version"], body["training_step"]) == ("0.9.7", 2500)
    assert body["trigger_word"] == "ohwx" and body["default_multiplier"] == 1.0
    assert body["size"] == len(lora_bytes) and len(body["sha256"]) == 64
    assert "self_attn.q" in body["target_modules"] and "ffn.2" in body["target_modules"]


def test_explicit_fields_override_the_header(api, lora_bytes):
    body = upload(api, lora_bytes, name="mine", trigger_word="zzz", default_multiplier="0.7").json()
    assert (body["name"], body["trigger_word"], body["default_multiplier"]) == ("mine", "zzz", 0.7)


def test_same_bytes_twice_is_one_lora_answered_200_the_second_time(api, lora_bytes):
    first = upload(api, lora_bytes)
    assert first.status_code == 201 and first.json()["created"] is True
    second = upload(api, lora_bytes, "renamed.safetensors")
    assert second.status_code == 200, second.json()
    body = second.json()
    assert body["id"] == first.json()["id"] and body["created"] is False
    assert body["message"] == f"This file is already in the library as {body['name']}."
    assert Lora.objects.count() == 1


def test_same_bytes_with_the_same_fields_is_no_conflict(api, lora_bytes):
    fields = {"name": "beach", "trigger_word": "zzz", "default_multiplier": "0.7", "visibility": "team"}
    assert upload(api, lora_bytes, **fields).status_code == 201
    again = upload(api, lora_bytes, **fields)
    assert again.status_code == 200 and again.json()["created"] is False


@pytest.mark.parametrize(
    "fields,differ",
    [
        ({"name": "other"}, {"name": {"existing": "mine", "given": "other"}}),
        ({"trigger_word": "yyy"}, {"trigger_word": {"existing": "zzz", "given": "yyy"}}),
        ({"default_multiplier": "0.5", "name": "mine"}, {"default_multiplier": {"existing": 0.7, "given": 0.5}}),
        ({"visibility": "private"}, {"visibility": {"existing": "team", "given": "private"}}),
    ],
)
def test_same_bytes_with_other_fields_is_refused_naming_the_lora(api, lora_bytes, fields, differ):
    lora = upload(api, lora_bytes, name="mine", trigger_word="zzz", default_multiplier="0.7").json()
    response = upload(api, lora_bytes, **fields)
    assert response.status_code == 409, response.json()
    error = response.json()["error"]
    assert error["code"] == "LORA_EXISTS" and "already in the library as mine" in error["message"]
    assert error["details"] == {"lora": {"id": lora["id"], "name": "mine"}, "fields": differ}
    assert Lora.objects.get().name == "mine" and Lora.objects.get().default_multiplier == 0.7


def test_another_users_private_lora_is_not_revealed(api, lora_bytes, django_user_model):
    from rest_framework.test import APIClient

    bob = APIClient()
    bob.force_authenticate(django_user_model.objects.create_user("bob", password="pw-bob-123"))
    secret = upload(bob, lora_bytes, name="bobs-secret", visibility="private").json()
    response = upload(api, lora_bytes)  # answered as any first upload: alice's own registration
    assert response.status_code == 201 and response.json()["created"] is True
    assert response.json()["id"] != secret["id"] and response.json()["owner"] == "alice"
    assert "bobs-secret" not in response.content.decode()


def test_text_file_is_not_safetensors(api):
    response = upload(api, b"just some notes, not a model\n" * 10, "notes.safetensors")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["message"]) == ("LORA_NOT_SAFETENSORS", "This file is not a safetensors file.")
    assert not Lora.objects.exists()


def test_upload_answers_are_typed_in_the_schema(api):
    schema = api.get("/api/schema/", {"format": "json"}).json()
    responses = schema["paths"]["/api/v1/loras/"]["post"]["responses"]
    for code in ("200", "201"):
        ref = responses[code]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        properties = schema["components"]["schemas"][ref]["properties"]
        assert properties["created"]["type"] == "boolean" and properties["message"]["type"] == "string"
        assert "sha256" in properties


def test_different_file_under_a_taken_name_is_a_conflict(api, lora_bytes, tmp_path):
    upload(api, lora_bytes, name="taken")
    other = write_aitoolkit_lora(tmp_path / "other.safetensors", shape=TINY_SHAPE, seed=99).read_bytes()
    response = upload(api, other, name="taken")
    assert response.status_code == 409 and response.json()["error"]["code"] == "LORA_NAME_TAKEN"
    assert Lora.objects.count() == 1


def test_list_detail_and_delete(api, lora_bytes):
    created = upload(api, lora_bytes).json()
    listed = api.get(URL).json()
    assert listed["count"] == 1 and listed["results"][0]["id"] == created["id"]
    detail = api.get(f"{URL}{created['id']}/").json()
    assert {**detail, "created": True, "message": created["message"]} == created
    stored = Lora.objects.get().file.name
    assert default_storage.exists(stored)

    assert api.delete(f"{URL}{created['id']}/").status_code == 204
    assert not Lora.objects.exists() and not default_storage.exists(stored)
    missing = api.get(f"{URL}{created['id']}/")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"


def _header_only(header_len: int, payload: bytes) -> bytes:
    return struct.pack("<Q", header_len) + payload


def _torch_pickle() -> bytes:
    buffer = io.BytesIO()
    torch.save({"a": torch.zeros(2)}, buffer)
    return buffer.getvalue()


def _unrelated_safetensors(tmp_path) -> bytes:
    save_file({"model.embed.weight": torch.zeros(4, 4)}, str(tmp_path / "unrelated.safetensors"))
    return (tmp_path / "unrelated.safetensors").read_bytes()


def _lora_of(tmp_path, shape: WanShape) -> bytes:
    return write_aitoolkit_lora(tmp_path / "other_model.safetensors", shape=shape, rank=1).read_bytes()


def _kohya_with_head_bias_delta(tmp_path, size: int) -> bytes:
    """A kohya LoRA for the tiny model (factors, full deltas) whose head bias delta has `size` entries."""
    path = write_kohya_lora(tmp_path / "kohya.safetensors", shape=TINY_SHAPE, outside=True)
    tensors = {**load_file(str(path)), "diffusion_model.head.head.diff_b": torch.zeros(size)}
    save_file(tensors, str(path))
    return path.read_bytes()


@pytest.mark.parametrize(
    "make,status,code",
    [
        pytest.param(lambda tmp, good: good[: len(good) // 2], 400, "LORA_FILE_TRUNCATED", id="cut-in-half"),
        pytest.param(lambda tmp, good: good[:5], 400, "LORA_FILE_TRUNCATED", id="shorter-than-length-field"),
        pytest.param(lambda tmp, good: _header_only(1000, b"{}"), 400, "LORA_FILE_TRUNCATED", id="header-past-end"),
        pytest.param(lambda tmp, good: _header_only(9 * 2**20, b"{}"), 400, "LORA_HEADER_TOO_LARGE", id="huge-header"),
        pytest.param(lambda tmp, good: _header_only(10, b"not json!!"), 400, "LORA_NOT_SAFETENSORS", id="not-json"),
        pytest.param(lambda tmp, good: _header_only(10, b"{not json}"), 400, "LORA_NOT_SAFETENSORS", id="bad-json"),
        pytest.param(lambda tmp, good: b"hello, world: a text file\n", 400, "LORA_NOT_SAFETENSORS", id="text-file"),
        pytest.param(lambda tmp, good: _torch_pickle(), 400, "LORA_NOT_SAFETENSORS", id="torch-save-zip"),
        pytest.param(
            lambda tmp, good: pickle.dumps({"a": [1.0, 2.0]}, protocol=2),
            400,
            "LORA_NOT_SAFETENSORS",
            id="pickle-protocol-2",
        ),
        pytest.param(lambda tmp, good: _unrelated_safetensors(tmp), 400, "LORA_UNKNOWN_FORMAT", id="unrelated-keys"),
        pytest.param(
            lambda tmp, good: _lora_of(tmp, WanShape(dim=5120, ffn_dim=13824, num_layers=2)),
            400,
            "LORA_MODEL_MISMATCH",
            id="made-for-14b",
        ),
        pytest.param(
            lambda tmp, good: _lora_of(tmp, WanShape(dim=24, ffn_dim=32, num_layers=3)),
            400,
            "LORA_MODEL_MISMATCH",
            id="more-blocks-than-model",
        ),
        pytest.param(
            lambda tmp, good: _kohya_with_head_bias_delta(tmp, 3),
            400,
            "LORA_MODEL_MISMATCH",
            id="kohya-delta-of-another-shape",
        ),
    ],
)
def test_bad_files_are_refused_with_a_code_and_create_nothing(api, tmp_path, lora_bytes, make, status, code):
    response = upload(api, make(tmp_path, lora_bytes))
    assert response.status_code == status, response.json()
    assert response.json()["error"]["code"] == code
    assert not Lora.objects.exists()


def test_a_kohya_lora_whose_deltas_fit_the_model_is_accepted(api, tmp_path):
    response = upload(api, _kohya_with_head_bias_delta(tmp_path, 64))
    assert response.status_code == 201, response.json()
    assert response.json()["key_format"] == "kohya"


def test_zero_byte_file_is_truncated(api):
    response = upload(api, b"")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "LORA_FILE_TRUNCATED"
    assert not Lora.objects.exists()


def test_valid_lora_whose_header_length_ends_in_0x80_is_accepted(api, tmp_path):
    for extra in range(300):  # pad the metadata until the little-endian length starts with 0x80
        data = write_aitoolkit_lora(
            tmp_path / "padded.safetensors", shape=TINY_SHAPE, trigger_words=("sks", "x" * extra)
        ).read_bytes()
        if data[0] == 0x80:
            break
    assert data[0] == 0x80 and data[8:9] == b"{"
    response = upload(api, data)
    assert response.status_code == 201, response.json()


def test_import_loras_registers_an_aitoolkit_output_folder(api, user, tmp_path):
    write_aitoolkit_lora(tmp_path / "job_x" / "job_x.safetensors", shape=TINY_SHAPE, seed=11)
    write_aitoolkit_lora(
        tmp_path / "job_x" / "job_x_000000500.safetensors", shape=TINY_SHAPE, seed=12, training_step=500
    )
    out = io.StringIO()
    call_command("import_loras", str(tmp_path), "--owner", "alice", stdout=out)
    assert "registered job_x/job_x.safetensors" in out.getvalue()
    rows = {lora.relative_path: lora for lora in Lora.objects.all()}
    assert set(rows) == {"job_x/job_x.safetensors", "job_x/job_x_000000500.safetensors"}
    assert rows["job_x/job_x.safetensors"].name == "job_x/job_x"
    assert rows["job_x/job_x_000000500.safetensors"].training_step == 500
    assert {lora.owner for lora in rows.values()} == {user}
    listed = api.get(URL, {"name": "job_x/job_x"}).json()["results"]
    assert [item["relative_path"] for item in listed] == ["job_x/job_x.safetensors"]

    call_command("import_loras", str(tmp_path), stdout=io.StringIO())  # again: nothing new
    assert Lora.objects.count() == 2


def test_import_loras_reports_refused_files(api, tmp_path):
    write_aitoolkit_lora(tmp_path / "job_ok" / "job_ok.safetensors", shape=TINY_SHAPE, seed=13)
    (tmp_path / "job_bad").mkdir()
    (tmp_path / "job_bad" / "job_bad.safetensors").write_bytes(_torch_pickle())
    err = io.StringIO()
    with pytest.raises(CommandError, match="1 file"):
        call_command("import_loras", str(tmp_path), stdout=io.StringIO(), stderr=err)
    assert "refused job_bad/job_bad.safetensors: LORA_NOT_SAFETENSORS" in err.getvalue()
    assert list(Lora.objects.values_list("relative_path", flat=True)) == ["job_ok/job_ok.safetensors"]
