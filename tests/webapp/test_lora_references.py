"""How a LoRA reference resolves: one namespace per spelling (id, sha256, URL, LORA_ROOT path, name), names
from headers and file names kept out of the others, and every spelling of a path one canonical path."""

import hashlib
import shutil
import uuid

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import TINY_SHAPE
from webapp.jobs.models import GenerationJob
from webapp.loras.models import Lora
from webapp.loras.selectors import lora_path_normalize, lora_ref_kind
from webapp.loras.services import lora_name_from
from workers.pipeline.checkpoints import write_aitoolkit_lora

LORAS, JOBS, V1 = "/api/v1/loras/", "/api/v1/jobs/", "/v1/inference"
PROMPT = {"prompt": "a cat", "width": 128, "height": 128, "num_frames": 9, "sample_steps": 2}
pytestmark = pytest.mark.django_db


@pytest.fixture
def bob(django_user_model, tiny_model, lora_files):
    client = APIClient()
    user = django_user_model.objects.create_user(username="bob", password="pw-bob-123")
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture
def root_dir():
    """A fresh folder under LORA_ROOT: (path, its name relative to LORA_ROOT); removed afterwards."""
    path = settings.LORA_ROOT / f"r_{uuid.uuid4().hex[:10]}"
    path.mkdir(parents=True)
    yield path, path.name
    shutil.rmtree(path)


def lora_bytes(tmp_path, seed: int, output_name: str | None = None) -> bytes:
    """A valid LoRA whose header's ss_output_name is `output_name` (None: no ss_output_name at all)."""
    path = write_aitoolkit_lora(tmp_path / f"src{seed}.safetensors", shape=TINY_SHAPE, seed=seed)
    with safe_open(str(path), "pt") as handle:
        metadata = dict(handle.metadata())
    metadata.pop("ss_output_name")
    if output_name is not None:
        metadata["ss_output_name"] = output_name
    save_file(load_file(str(path)), str(path), metadata=metadata)
    return path.read_bytes()


def upload(client, data: bytes, filename="lora.safetensors", status=201, **fields) -> dict:
    response = client.post(LORAS, {"file": SimpleUploadedFile(filename, data), **fields}, format="multipart")
    assert response.status_code == status, response.content
    return response.json()


def submit(client, ref: str, api: str = "jobs"):
    if api == "v1":
        body = {"model": "wan21_14b", "loras": [{"path": ref}], "prompts": [PROMPT]}
        return client.post(V1, body, format="json")
    return client.post(JOBS, {"loras": [{"lora": ref}], "prompts": [PROMPT]}, format="json")


def used_lora(response) -> Lora:
    """The LoRA the job a submit made renders with."""
    assert response.status_code in (200, 201), response.content
    body = response.json()
    return GenerationJob.objects.get(pk=body.get("request_id") or body["id"]).job_loras.get().lora


def not_found(response):
    assert response.status_code == 404, response.content
    assert response.json()["error"]["code"] == "LORA_NOT_FOUND"


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the rules themselves ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref,kind",
    [
        ("42", "id"),
        ("007", "id"),
        ("99999999999999999999", "id"),
        ("a" * 64, "sha256"),
        ("A" * 64, "sha256"),
        ("a" * 63, "name"),
        ("https://example.com/x.safetensors", "url"),
        ("job_a/job_a.safetensors", "path"),
        ("job_a/job_a", "path"),
        ("x.safetensors", "path"),
        ("x.SafeTensors", "path"),
        ("job_a\\job_a.safetensors", "path"),
        ("beach", "name"),
        ("beach v2 (final)", "name"),
        ("\u0661\u0662", "name"),  # Arabic-Indic digits are not an id
        ("12ab", "name"),
    ],
)
def test_each_spelling_has_one_namespace(ref, kind):
    assert lora_ref_kind(ref) == kind


@pytest.mark.parametrize(
    "ref,canonical",
    [
        ("job_a/job_a.safetensors", "job_a/job_a.safetensors"),
        ("./job_a/job_a.safetensors", "job_a/job_a.safetensors"),
        ("job_a//job_a.safetensors", "job_a/job_a.safetensors"),
        ("job_a/./job_a.safetensors", "job_a/job_a.safetensors"),
        ("job_a\\job_a.safetensors", "job_a/job_a.safetensors"),
        ("other/../job_a/job_a.safetensors", "job_a/job_a.safetensors"),
        ("job_a/job_a", "job_a/job_a.safetensors"),
        ("job_a/job_a.safetensors/", "job_a/job_a.safetensors"),
        ("../loras/job_a/job_a.safetensors", None),
        ("job_a/../../x.safetensors", None),
        ("..\\x.safetensors", None),
        ("/etc/passwd", None),
        ("\\etc\\passwd", None),
        ("job_a/\x00.safetensors", None),
    ],
)
def test_path_spellings_normalise_to_one_canonical_path(ref, canonical):
    assert lora_path_normalize(ref) == canonical


@pytest.mark.parametrize(
    "raw,name",
    [
        ("beach", "beach"),
        ("team_job/team.safetensors", "team_job_team"),
        ("team_job/team", "team_job_team"),
        ("..\\loras\\team_job\\team.safetensors", ".._loras_team_job_team"),
        ("x.safetensors.safetensors", "x"),
        ("x.SAFETENSORS", "x"),
        ("12345", "lora-12345"),
        ("ab" * 32, "lora-" + "ab" * 32),
        ("AB" * 32, "lora-" + "AB" * 32),
        ("https://example.com/x.safetensors", "https:__example.com_x"),
        (".safetensors", "lora"),
        ("/", "_"),
        ("a\x00b\nc", "abc"),
        ("  spaced  ", "spaced"),
    ],
)
def test_names_from_files_are_made_valid_names(raw, name):
    assert lora_name_from(raw) == name
    assert lora_ref_kind(lora_name_from(raw)) == "name"


# --- names from a header or a file name ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "output_name",
    [
        "team_job/team.safetensors",
        "team_job/team",
        "12345",
        "0" * 64,
        "./team_job/team.safetensors",
        "team_job//team.safetensors",
        "team_job\\team.safetensors",
        "https://example.com/team.safetensors",
        "x.safetensors.safetensors",
    ],
)
def test_header_names_never_take_another_namespace(api, tmp_path, output_name):
    body = upload(api, lora_bytes(tmp_path, 201, output_name))
    assert lora_ref_kind(body["name"]) == "name", body["name"]
    assert body["relative_path"] is None


@pytest.mark.parametrize(
    "filename",
    ["12345.safetensors", f"{'c' * 64}.safetensors", "x.safetensors.safetensors", "team.SAFETENSORS", ".safetensors"],
)
def test_file_names_never_take_another_namespace(api, tmp_path, filename):
    body = upload(api, lora_bytes(tmp_path, 202, output_name=None), filename)
    assert lora_ref_kind(body["name"]) == "name", body["name"]


@pytest.mark.parametrize("api_kind", ["jobs", "v1"])
@pytest.mark.parametrize(
    "output_name",
    ["{rel}/team.safetensors", "{rel}/team", "./{rel}/team.safetensors", "{rel}\\team.safetensors"],
)
def test_an_upload_never_stands_in_for_a_file_under_the_root(api, bob, tmp_path, root_dir, api_kind, output_name):
    folder, rel = root_dir
    real = write_aitoolkit_lora(folder / "team.safetensors", shape=TINY_SHAPE, seed=203)
    upload(bob, lora_bytes(tmp_path, 204, output_name.format(rel=rel)))  # bob's upload, named like the file
    lora = used_lora(submit(api, f"{rel}/team.safetensors", api_kind))
    assert (lora.sha256, lora.relative_path) == (sha256_of(real), f"{rel}/team.safetensors")
    assert Lora.objects.count() == 2


def test_a_name_already_taken_never_blocks_a_file_under_the_root(api, tmp_path, root_dir):
    """Rows named like a root file's name (as uploads could be before these rules) don't block it."""
    folder, rel = root_dir
    real = write_aitoolkit_lora(folder / "team.safetensors", shape=TINY_SHAPE, seed=205)
    for seed, legacy in ((206, f"{rel}/team"), (207, f"{rel}/team.safetensors")):
        Lora.objects.filter(pk=upload(api, lora_bytes(tmp_path, seed, f"x{seed}"))["id"]).update(name=legacy)
    lora = used_lora(submit(api, f"{rel}/team.safetensors"))
    assert lora.sha256 == sha256_of(real) and lora.relative_path == f"{rel}/team.safetensors"
    assert lora.name.startswith(f"{rel}/team-")  # its usual name was taken: made unique with its sha256
    assert used_lora(submit(api, f"{rel}/team")) == lora


@pytest.mark.parametrize("api_kind", ["jobs", "v1"])
def test_a_number_or_sha256_in_a_header_never_answers_an_id_or_sha256(api, bob, tmp_path, lora_files, api_kind):
    unregistered = sha256_of(lora_files["b"])  # job_b is not registered yet in this test
    upload(bob, lora_bytes(tmp_path, 208, "987654"))
    upload(bob, lora_bytes(tmp_path, 209, unregistered))
    upload(bob, lora_bytes(tmp_path, 210, output_name=None), f"{unregistered.upper()}.safetensors")
    not_found(submit(api, "987654", api_kind))
    not_found(submit(api, unregistered, api_kind))
    not_found(submit(api, unregistered.upper(), api_kind))
    assert not GenerationJob.objects.exists()
    # once registered (by its path), the sha256 names the file itself, in either case
    real = used_lora(submit(api, "job_b/job_b.safetensors", api_kind))
    assert used_lora(submit(api, unregistered.upper(), api_kind)) == real


def test_a_name_made_from_a_file_is_unique(api, tmp_path):
    first = upload(api, lora_bytes(tmp_path, 211, "same"))
    second = upload(api, lora_bytes(tmp_path, 212, "same"))
    assert first["name"] == "same" and second["name"] == f"same-{second['sha256'][:12]}"


@pytest.mark.parametrize(
    "name",
    [
        "42",
        "a" * 64,
        "A" * 64,
        "x.safetensors",
        "x.SAFETENSORS",
        "team/x",
        "team\\x",
        "https://example.com/x",
        "job_a/job_a.safetensors",
    ],
)
def test_a_name_given_that_is_no_name_is_refused_by_api_and_page(api, user, client, tmp_path, name):
    error = upload(api, lora_bytes(tmp_path, 213, "ok"), name=name, status=400)["error"]
    assert error["details"]["name"][0]["code"] == "invalid_name"
    client.force_login(user)
    page = client.post(
        "/loras/", {"file": SimpleUploadedFile("x.safetensors", b"x"), "name": name, "visibility": "team"}
    )
    assert page.status_code == 400 and not Lora.objects.exists()


def test_a_name_given_that_is_taken_is_still_refused(api, tmp_path):
    upload(api, lora_bytes(tmp_path, 214, "a"), name="taken")
    error = upload(api, lora_bytes(tmp_path, 215, "b"), name="taken", status=409)["error"]
    assert error["code"] == "LORA_NAME_TAKEN"


# --- paths: one canonical spelling --------------------------------------------------------------------------------


@pytest.mark.parametrize("api_kind", ["jobs", "v1"])
def test_every_spelling_of_a_path_is_one_lora(api, root_dir, api_kind):
    folder, rel = root_dir
    write_aitoolkit_lora(folder / "job" / "job.safetensors", shape=TINY_SHAPE, seed=216)
    spellings = [
        f"./{rel}/job/job.safetensors",  # the first spelling registers it: under the canonical path
        f"{rel}/job/job.safetensors",
        f"{rel}//job/job.safetensors",
        f"{rel}/./job/job.safetensors",
        f"{rel}\\job\\job.safetensors",
        f"{rel}/other/../job/job.safetensors",
        f"{rel}/job/job",
    ]
    loras = {used_lora(submit(api, ref, api_kind)).pk for ref in spellings}
    assert len(loras) == 1 and Lora.objects.get().relative_path == f"{rel}/job/job.safetensors"
    assert Lora.objects.get().name == f"{rel}/job/job"


@pytest.mark.parametrize("api_kind", ["jobs", "v1"])
def test_spellings_leaving_the_root_stay_not_found(api, root_dir, api_kind):
    folder, rel = root_dir
    write_aitoolkit_lora(folder / "job.safetensors", shape=TINY_SHAPE, seed=217)
    root_name = settings.LORA_ROOT.resolve().name
    for ref in (
        f"../{root_name}/{rel}/job.safetensors",
        f"{rel}/../../{root_name}/{rel}/job.safetensors",
        f"..\\{root_name}\\{rel}\\job.safetensors",
        f"{settings.LORA_ROOT.resolve()}/{rel}/job.safetensors",
    ):
        not_found(submit(api, ref, api_kind))
    assert not Lora.objects.exists()


def test_a_path_matches_only_files_registered_from_the_root(api, bob, tmp_path, root_dir):
    """An upload whose name is a path (possible before these rules) is never what that path names."""
    folder, rel = root_dir
    legacy = upload(bob, lora_bytes(tmp_path, 218, "legacy"))
    Lora.objects.filter(pk=legacy["id"]).update(name=f"{rel}/gone.safetensors")
    not_found(submit(api, f"{rel}/gone.safetensors"))
    real = write_aitoolkit_lora(folder / "gone.safetensors", shape=TINY_SHAPE, seed=219)
    assert used_lora(submit(api, f"{rel}/gone.safetensors")).sha256 == sha256_of(real)


@pytest.mark.parametrize("ref", ["99999999999999999999", "0", "\u0661", "beach", "job_a", "."])
def test_unknown_references_are_not_found(api, ref):
    not_found(submit(api, ref))


def test_each_kind_of_reference_finds_its_lora(api, tmp_path):
    uploaded = upload(api, lora_bytes(tmp_path, 220, "named"))
    root = used_lora(submit(api, "job_a/job_a.safetensors"))
    for ref in (str(uploaded["id"]), uploaded["sha256"], uploaded["sha256"].upper(), "named"):
        assert used_lora(submit(api, ref)).pk == uploaded["id"]
    for ref in (str(root.pk), root.sha256, "job_a/job_a.safetensors", "job_a/job_a", "./job_a//job_a.safetensors"):
        assert used_lora(submit(api, ref)) == root
