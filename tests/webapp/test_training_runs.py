"""ai-toolkit training runs imported whole: one family of LoRAs (run, step, version), by the import command,
the API (files or a zip of the run folder) and the library page; re-imports add what is new, and a changed
file becomes the next version while jobs keep the bytes they rendered with."""

import io
import zipfile
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from selenium.webdriver.common.by import By

from tests.conftest import SMALL, TINY_SHAPE, wait_for
from tests.runs import run_config, write_checkpoint, write_run
from tests.webapp.browser import needs_chromium, screenshot, sign_in
from tests.webapp.test_pages_library_browser import wait_text
from webapp.jobs.models import GenerationJob
from webapp.loras.models import Lora
from webapp.loras.selectors import lora_find
from webapp.prompts.models import PromptSet
from workers.pipeline.checkpoints import write_aitoolkit_lora

RUNS_URL = "/api/v1/loras/runs/"
pytestmark = pytest.mark.django_db

CONFIG = run_config("mrx_run", trigger_word="mrx")


@pytest.fixture
def run_folder(tmp_path, tiny_model) -> Path:
    """output/mrx_run after 500 steps: config.yaml, checkpoints 250 and 500, the final file and samples/
    (LoRAs of the tiny model, which uploads are checked against)."""
    return write_run(tmp_path / "output" / "mrx_run", trigger_word="mrx", seeds={250: 1, 500: 2}, final_seed=3)


def import_command(directory: Path, *args) -> str:
    out = io.StringIO()
    call_command("import_loras", str(directory), *args, stdout=out)
    return out.getvalue()


def current(**filters) -> dict[str, Lora]:
    return {lora.name: lora for lora in Lora.objects.filter(superseded=False, **filters)}


def test_a_run_folder_imports_as_one_run(user, run_folder):
    out = import_command(run_folder, "--owner", "alice")
    assert "run mrx_run: 3 added, 0 updated, 0 unchanged, 0 refused" in out
    assert "registered mrx_run/mrx_run_000000250.safetensors (step 250" in out
    assert "prompt set mrx_run (2 prompts)" in out

    loras = current(training_run="mrx_run")
    assert {name: lora.training_step for name, lora in loras.items()} == {
        "mrx_run/mrx_run_000000250": 250,
        "mrx_run/mrx_run_000000500": 500,
        "mrx_run/mrx_run": 500,
    }
    final = loras["mrx_run/mrx_run"]
    assert final.relative_path == "mrx_run/mrx_run.safetensors" and final.owner == user
    assert {(lora.trigger_word, lora.default_multiplier, lora.version) for lora in loras.values()} == {("mrx", 0.8, 1)}

    prompt_set = PromptSet.objects.get(name="mrx_run")
    assert (prompt_set.owner, prompt_set.trigger_word) == (user, "mrx")
    assert [(item.prompt, item.width, item.height, item.seed) for item in prompt_set.items.all()] == [
        ("[trigger] walking on a beach at sunset", 832, 480, 42),
        ("[trigger] playing chess in the park", 832, 480, 7),
    ]


def test_more_training_adds_the_new_checkpoint_and_a_changed_final_becomes_version_2(api, user, run_folder):
    runs = run_folder.parent  # a folder of runs this time
    import_command(runs, "--owner", "alice")
    first_final = Lora.objects.get(relative_path="mrx_run/mrx_run.safetensors")

    write_checkpoint(run_folder, 750, seed=4)
    out = import_command(runs, "--owner", "alice")
    assert "run mrx_run: 1 added, 0 updated, 3 unchanged, 0 refused" in out
    assert "registered mrx_run/mrx_run_000000750.safetensors (step 750" in out
    assert Lora.objects.count() == 4 and PromptSet.objects.filter(name="mrx_run").count() == 1

    write_checkpoint(run_folder, None, seed=5, header_step=1000)  # training went on to 1000: a new final file
    out = import_command(runs, "--owner", "alice")
    assert "run mrx_run: 0 added, 1 updated, 3 unchanged, 0 refused" in out
    assert "new version mrx_run/mrx_run.safetensors (version 2, step 1000" in out

    old = Lora.objects.get(pk=first_final.pk)
    assert (old.superseded, old.version, old.sha256, old.name) == (True, 1, first_final.sha256, "mrx_run/mrx_run")
    new = Lora.objects.get(relative_path="mrx_run/mrx_run.safetensors", superseded=False)
    assert (new.version, new.training_step, new.training_run, new.name) == (2, 1000, "mrx_run", "mrx_run/mrx_run")
    assert new.sha256 != old.sha256 and new.pk != old.pk

    # a path names the current version; an id or a sha256 exactly the file it named
    for ref in ("mrx_run/mrx_run.safetensors", "mrx_run/mrx_run", "mrx_run\\mrx_run.safetensors"):
        assert lora_find(ref=ref, user=user) == new
    assert lora_find(ref=str(old.pk), user=user) == old and lora_find(ref=old.sha256, user=user) == old
    by_path = api.post(
        "/api/v1/jobs/",
        {"loras": [{"lora": "mrx_run/mrx_run.safetensors"}], "prompts": [{"prompt": "mrx", **SMALL}]},
        format="json",
    )
    assert by_path.status_code == 201, by_path.json()
    assert by_path.json()["loras"][0]["sha256"] == new.sha256
    by_id = api.post(
        "/api/v1/jobs/", {"loras": [{"lora": str(old.pk)}], "prompts": [{"prompt": "mrx", **SMALL}]}, format="json"
    )
    assert by_id.json()["loras"][0]["sha256"] == old.sha256

    # the list shows current versions; ?superseded=true the earlier ones; the old one's detail still answers
    listed = api.get("/api/v1/loras/", {"training_run": "mrx_run"}).json()["results"]
    assert sorted((item["training_step"], item["version"]) for item in listed) == [
        (250, 1),
        (500, 1),
        (750, 1),
        (1000, 2),
    ]
    earlier = api.get("/api/v1/loras/", {"training_run": "mrx_run", "superseded": "true"}).json()["results"]
    assert [(item["id"], item["superseded"], item["version"]) for item in earlier] == [(old.pk, True, 1)]
    assert api.get(f"/api/v1/loras/{old.pk}/").json()["sha256"] == old.sha256

    import_command(runs, "--owner", "alice")  # nothing new
    assert Lora.objects.count() == 5


def test_deleting_the_current_version_makes_the_earlier_one_current_again(api, run_folder):
    import_command(run_folder, "--owner", "alice")
    first = Lora.objects.get(name="mrx_run/mrx_run")
    write_checkpoint(run_folder, None, seed=5, header_step=1000)
    import_command(run_folder, "--owner", "alice")
    second = Lora.objects.get(name="mrx_run/mrx_run", superseded=False)
    assert api.delete(f"/api/v1/loras/{second.pk}/").status_code == 204
    assert lora_find(ref="mrx_run/mrx_run.safetensors") == first
    assert not Lora.objects.get(pk=first.pk).superseded


def files_upload(api, paths, **fields):
    files = [SimpleUploadedFile(path.name, path.read_bytes()) for path in paths]
    return api.post(RUNS_URL, {"files": files, **fields}, format="multipart")


def test_api_upload_of_files_and_config(api, run_folder):
    paths = sorted(run_folder.glob("*.safetensors"))
    config = SimpleUploadedFile("config.yaml", CONFIG.encode())
    response = files_upload(api, paths, config=config)
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["run"], body["trigger_word"], body["updated"], body["unchanged"], body["refused"]) == (
        "mrx_run",
        "mrx",
        [],
        [],
        [],
    )
    assert body["prompt_set"] == PromptSet.objects.get(name="mrx_run").pk
    assert sorted((item["name"], item["training_step"], item["version"]) for item in body["added"]) == [
        ("mrx_run", 500, 1),
        ("mrx_run_000000250", 250, 1),
        ("mrx_run_000000500", 500, 1),
    ]
    assert {(item["training_run"], item["trigger_word"], item["default_multiplier"]) for item in body["added"]} == {
        ("mrx_run", "mrx", 0.8)
    }
    assert all(item["superseded"] is False and item["relative_path"] is None for item in body["added"])

    # the next checkpoint alone, in a request of its own: the run's trigger word and multiplier carry over
    body = files_upload(api, [write_checkpoint(run_folder, 750, seed=4)]).json()
    assert [(item["name"], item["training_step"]) for item in body["added"]] == [("mrx_run_000000750", 750)]
    assert (body["added"][0]["trigger_word"], body["added"][0]["default_multiplier"], body["prompt_set"]) == (
        "mrx",
        0.8,
        None,
    )

    old = Lora.objects.get(name="mrx_run")
    steps = [run_folder / "mrx_run_000000250.safetensors", run_folder / "mrx_run_000000500.safetensors"]
    body = files_upload(api, [write_checkpoint(run_folder, None, seed=5, header_step=1000), *steps]).json()
    assert [(item["name"], item["version"], item["training_step"]) for item in body["updated"]] == [
        ("mrx_run", 2, 1000)
    ]
    assert (len(body["added"]), len(body["unchanged"])) == (0, 2)
    assert lora_find(ref="mrx_run", user=old.owner).version == 2
    assert Lora.objects.get(pk=old.pk).superseded
    job = api.post(
        "/api/v1/jobs/", {"loras": [{"lora": "mrx_run"}], "prompts": [{"prompt": "x", **SMALL}]}, format="json"
    ).json()
    assert job["loras"][0]["sha256"] == body["updated"][0]["sha256"]


def test_api_refuses_a_file_that_is_no_lora_and_keeps_the_others(api, run_folder, tmp_path):
    bad = tmp_path / "mrx_run_000000100.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    body = files_upload(api, [write_checkpoint(run_folder, 250, seed=1), bad], run="mrx_run").json()
    assert [item["name"] for item in body["added"]] == ["mrx_run_000000250"]
    assert [(item["file"], item["code"]) for item in body["refused"]] == [
        ("mrx_run_000000100.safetensors", "LORA_NOT_SAFETENSORS")
    ]


def test_api_needs_a_run_name_when_the_files_disagree(api, run_folder, tmp_path):
    other = write_aitoolkit_lora(tmp_path / "other.safetensors", shape=TINY_SHAPE, seed=8)
    response = files_upload(api, [write_checkpoint(run_folder, 250, seed=1), other])
    assert response.status_code == 400 and response.json()["error"]["code"] == "RUN_NAME_UNKNOWN"
    assert files_upload(api, [other], run="../x").json()["error"]["code"] == "INVALID_RUN_NAME"
    assert files_upload(api, []).json()["error"]["code"] == "VALIDATION_ERROR"
    assert not Lora.objects.exists()


def zipped(entries: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> SimpleUploadedFile:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return SimpleUploadedFile("run.zip", buffer.getvalue(), content_type="application/zip")


def folder_entries(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder.parent).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_api_upload_of_a_zipped_run_folder(api, run_folder):
    response = api.post(RUNS_URL, {"archive": zipped(folder_entries(run_folder))}, format="multipart")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["run"], body["trigger_word"], len(body["added"])) == ("mrx_run", "mrx", 3)
    assert body["prompt_set"] == PromptSet.objects.get(name="mrx_run").pk
    assert {item["training_step"] for item in body["added"]} == {250, 500}

    write_checkpoint(run_folder, 750, seed=4)
    write_checkpoint(run_folder, None, seed=5, header_step=1000)
    body = api.post(RUNS_URL, {"archive": zipped(folder_entries(run_folder))}, format="multipart").json()
    assert [item["name"] for item in body["added"]] == ["mrx_run_000000750"]
    assert [(item["name"], item["version"]) for item in body["updated"]] == [("mrx_run", 2)]
    assert sorted(item["name"] for item in body["unchanged"]) == ["mrx_run_000000250", "mrx_run_000000500"]


def test_api_refuses_unsafe_zips_with_a_code(api, run_folder, settings):
    lora = (run_folder / "mrx_run.safetensors").read_bytes()
    cases = [
        ({"../mrx_run.safetensors": lora}, "ARCHIVE_UNSAFE_PATH"),
        ({"mrx_run/../../etc/mrx_run.safetensors": lora}, "ARCHIVE_UNSAFE_PATH"),
        ({"/abs/mrx_run.safetensors": lora}, "ARCHIVE_UNSAFE_PATH"),
        ({"mrx_run/mrx_run.safetensors": lora, "mrx_run/samples/../../x.jpg": b"x"}, "ARCHIVE_UNSAFE_PATH"),
        ({"mrx_run/mrx_run_000000250.safetensors": bytes(64 * 2**20)}, "ARCHIVE_BOMB"),  # 64 MiB of zeros
        ({"a/mrx_run.safetensors": lora, "b/mrx_run.safetensors": lora}, "ARCHIVE_NOT_ONE_RUN"),
        ({"mrx_run/config.yaml": CONFIG.encode()}, "ARCHIVE_NO_CHECKPOINTS"),
    ]
    for entries, code in cases:
        response = api.post(RUNS_URL, {"archive": zipped(entries)}, format="multipart")
        assert (response.status_code, response.json()["error"]["code"]) == (400, code), entries.keys()
    not_a_zip = SimpleUploadedFile("run.zip", b"PK\x03\x04 and then nothing")
    assert api.post(RUNS_URL, {"archive": not_a_zip}, format="multipart").json()["error"]["code"] == "ARCHIVE_INVALID"

    settings.LORA_MAX_UPLOAD_BYTES = len(lora) - 1  # stored, not compressed: its declared size is over the bound
    response = api.post(
        RUNS_URL, {"archive": zipped({"mrx_run/mrx_run.safetensors": lora}, zipfile.ZIP_STORED)}, format="multipart"
    )
    assert response.json()["error"]["code"] == "ARCHIVE_TOO_LARGE"
    assert not Lora.objects.exists()


def test_library_and_detail_pages_show_the_run(client, user, run_folder):
    import_command(run_folder, "--owner", "alice")
    write_checkpoint(run_folder, None, seed=5, header_step=1000)
    import_command(run_folder, "--owner", "alice")
    client.force_login(user)

    page = client.get("/loras/").content.decode()
    assert "Upload a training run" in page and 'action="/loras/runs/"' in page
    assert page.count('href="/loras/?run=mrx_run"') == 3  # the three current checkpoints link their run
    assert "step 250" in page and "step 1000" in page and "v2" in page
    earlier = client.get("/loras/", {"superseded": "true"}).content.decode()
    assert "v1, earlier" in earlier and "step 250" not in earlier

    final = Lora.objects.get(name="mrx_run/mrx_run", superseded=False)
    detail = client.get(f"/loras/{final.pk}/").content.decode()
    assert "Run mrx_run: step 1000" in detail and 'href="/sweeps/new/?run=mrx_run"' in detail
    for other in Lora.objects.filter(training_run="mrx_run").exclude(pk=final.pk):
        assert f'href="/loras/{other.pk}/"' in detail  # the other checkpoints and the earlier version
    old = Lora.objects.get(name="mrx_run/mrx_run", superseded=True)
    old_page = client.get(f"/loras/{old.pk}/").content.decode()
    assert "An earlier version" in old_page and f'href="/loras/{final.pk}/">version 2</a>' in old_page


def test_library_page_uploads_a_run(client, user, run_folder):
    client.force_login(user)
    files = [open(path, "rb") for path in sorted(run_folder.glob("*.safetensors"))]
    with (run_folder / "config.yaml").open("rb") as config:
        response = client.post("/loras/runs/", {"files": files, "config": config})
    for fh in files:
        fh.close()
    assert response.status_code == 302 and response["Location"] == "/loras/?run=mrx_run"
    page = client.get(response["Location"]).content.decode()
    assert "Run mrx_run: 3 added, 0 updated, 0 unchanged, 0 refused" in page
    assert set(current(training_run="mrx_run")) == {"mrx_run", "mrx_run_000000250", "mrx_run_000000500"}

    response = client.post("/loras/runs/", {"archive": zipped({"../x.safetensors": b"x"})})
    assert response.status_code == 400 and "ARCHIVE_UNSAFE_PATH" in response.content.decode()
    response = client.post("/loras/runs/", {})
    assert response.status_code == 400 and "Choose the run" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_each_output_record_keeps_the_sha256_it_rendered_with(api, start_worker, run_folder):
    start_worker("runs")
    import_command(run_folder, "--owner", "alice")
    body = {"loras": [{"lora": "mrx_run/mrx_run.safetensors"}], "prompts": [{"prompt": "mrx walking", **SMALL}]}

    def render() -> GenerationJob:
        response = api.post("/api/v1/jobs/", body, format="json")
        assert response.status_code == 201, response.json()
        job_id = response.json()["id"]
        job = wait_for(
            lambda: (j := api.get(f"/api/v1/jobs/{job_id}/").json())["status"] in ("succeeded", "failed") and j
        )
        assert job["status"] == "succeeded", job
        return job

    first = render()
    version_1 = Lora.objects.get(name="mrx_run/mrx_run")
    write_checkpoint(run_folder, None, seed=5, header_step=1000)
    import_command(run_folder, "--owner", "alice")
    second = render()
    version_2 = Lora.objects.get(name="mrx_run/mrx_run", superseded=False)

    assert [lora["sha256"] for lora in first["outputs"][0]["record"]["loras"]] == [version_1.sha256]
    assert [lora["sha256"] for lora in second["outputs"][0]["record"]["loras"]] == [version_2.sha256]
    again = api.get(f"/api/v1/jobs/{first['id']}/").json()
    assert again["outputs"][0]["record"]["loras"][0]["sha256"] == version_1.sha256


@needs_chromium
@pytest.mark.django_db(transaction=True)
def test_upload_a_run_in_chromium_then_its_next_version(browser, live_server, user, run_folder, tmp_path):
    archive = tmp_path / "mrx_run.zip"
    archive.write_bytes(zipped(folder_entries(run_folder)).read())
    sign_in(browser, live_server.url, "alice", "pw-alice-123")
    browser.get(f"{live_server.url}/loras/")
    browser.find_element(By.NAME, "archive").send_keys(str(archive))
    browser.find_element(By.CSS_SELECTOR, "form[action='/loras/runs/'] button[type=submit]").click()
    wait_text(browser, "Run mrx_run: 3 added, 0 updated, 0 unchanged, 0 refused")
    assert browser.current_url == f"{live_server.url}/loras/?run=mrx_run"

    # more training: the new checkpoint and the new final, chosen together in the files field
    paths = [write_checkpoint(run_folder, 750, seed=4), write_checkpoint(run_folder, None, seed=5, header_step=1000)]
    browser.find_element(By.NAME, "files").send_keys("\n".join(str(path) for path in paths))
    browser.find_element(By.CSS_SELECTOR, "form[action='/loras/runs/'] button[type=submit]").click()
    wait_text(browser, "Run mrx_run: 1 added, 1 updated, 0 unchanged, 0 refused")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.library tbody tr")
    assert len(rows) == 4 and "v2" in next(row.text for row in rows if row.text.startswith("mrx_run v2"))
    screenshot(browser, "lora-run-library")

    browser.find_element(By.LINK_TEXT, "mrx_run").click()
    wait_text(browser, "Run mrx_run: step 1000")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Versions of mrx_run" in body and "mrx_run_000000750" in body
    compare = browser.find_element(By.LINK_TEXT, "Compare checkpoints of this run")
    assert compare.get_attribute("href").endswith("/sweeps/new/?run=mrx_run")
    screenshot(browser, "lora-run-detail")

    browser.find_element(By.LINK_TEXT, "1").click()  # version 1, in the versions table
    wait_text(browser, "An earlier version")
    screenshot(browser, "lora-run-earlier-version")


def test_a_run_name_another_owner_uses_is_refused_before_anything_is_stored(api, bob_api, user, run_folder, tmp_path):
    paths = sorted(run_folder.glob("*.safetensors"))
    assert files_upload(api, paths, config=SimpleUploadedFile("config.yaml", CONFIG.encode())).status_code == 201
    before = Lora.objects.count()

    theirs = write_run(tmp_path / "bob" / "mrx_run", trigger_word="bob", seeds={250: 21}, final_seed=22)
    response = files_upload(bob_api, sorted(theirs.glob("*.safetensors")), run="mrx_run")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "RUN_NAME_TAKEN")
    assert response.json()["error"]["details"] == {"run": "mrx_run"}
    response = bob_api.post(RUNS_URL, {"archive": zipped(folder_entries(theirs))}, format="multipart")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "RUN_NAME_TAKEN")
    assert Lora.objects.count() == before and PromptSet.objects.filter(owner__username="bob").count() == 0
    assert {(lora.owner, lora.trigger_word) for lora in Lora.objects.filter(training_run="mrx_run")} == {(user, "mrx")}

    # under a name of their own it imports
    assert files_upload(bob_api, sorted(theirs.glob("*.safetensors")), run="bob_run").status_code == 201

    # the import command (no owner) acts for the server: it keeps working on its own runs, which are taken too
    served = write_run(tmp_path / "server" / "srv_run", trigger_word="srv", seeds={250: 31}, final_seed=32)
    assert "run srv_run: 2 added, 0 updated, 0 unchanged, 0 refused" in import_command(served.parent)
    write_checkpoint(served, None, seed=33, header_step=1000)
    assert "run srv_run: 0 added, 1 updated, 1 unchanged, 0 refused" in import_command(served.parent)
    response = files_upload(api, [write_checkpoint(served, 750, seed=34)], run="srv_run")
    assert (response.status_code, response.json()["error"]["code"]) == (409, "RUN_NAME_TAKEN")


def test_a_run_file_renamed_at_its_first_import_gets_its_next_version(api, bob_api, run_folder):
    other = write_aitoolkit_lora(run_folder.parent / "elsewhere.safetensors", shape=TINY_SHAPE, seed=30)
    with other.open("rb") as fh:  # a team LoRA of bob's, named like the run's final file
        response = bob_api.post("/api/v1/loras/", {"file": fh, "name": "mrx_run"}, format="multipart")
    assert response.status_code == 201, response.json()
    taken = Lora.objects.get(pk=response.json()["id"])

    body = files_upload(api, [run_folder / "mrx_run.safetensors"], run="mrx_run").json()
    (first,) = body["added"]
    assert first["name"].startswith("mrx_run-") and first["version"] == 1

    body = files_upload(api, [write_checkpoint(run_folder, None, seed=5, header_step=1000)], run="mrx_run").json()
    assert (body["added"], body["unchanged"]) == ([], [])
    assert [(item["name"], item["version"], item["training_step"]) for item in body["updated"]] == [
        (first["name"], 2, 1000)
    ]
    assert Lora.objects.get(pk=first["id"]).superseded and Lora.objects.get(pk=taken.pk).name == "mrx_run"


def test_zip_limits_hold_for_the_whole_archive(api, run_folder, settings):
    lora = (run_folder / "mrx_run.safetensors").read_bytes()
    two = {"mrx_run/mrx_run.safetensors": lora, "mrx_run/mrx_run_000000250.safetensors": lora[:-1] + b" "}
    settings.RUN_ARCHIVE_MAX_BYTES = 2 * len(lora) - 1  # each file within LORA_MAX_UPLOAD_BYTES, not both
    response = api.post(RUNS_URL, {"archive": zipped(two, zipfile.ZIP_STORED)}, format="multipart")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "ARCHIVE_TOO_LARGE")

    settings.RUN_ARCHIVE_MAX_BYTES = 2**40
    spread = {f"mrx_run/mrx_run_{step:09d}.safetensors": bytes(2**19) for step in range(1, 9)}  # 4 MiB of zeros
    response = api.post(RUNS_URL, {"archive": zipped(spread)}, format="multipart")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "ARCHIVE_BOMB")
    assert not Lora.objects.exists()


def test_the_import_command_goes_on_past_a_config_it_cannot_read(user, run_folder):
    broken = write_run(run_folder.parent / "broken_run", trigger_word="b", seeds={250: 9})
    (broken / "config.yaml").write_text(run_config("broken_run", "b").replace("seed: 42", "seed: " + "9" * 5000))
    out = import_command(run_folder.parent, "--owner", "alice")
    assert "run mrx_run: 3 added, 0 updated, 0 unchanged, 0 refused" in out
    assert "run broken_run: 1 added, 0 updated, 0 unchanged, 0 refused" in out
    assert "note: config.yaml not used: INVALID_TRAINING_CONFIG" in out
    assert Lora.objects.get(training_run="broken_run").relative_path == "broken_run/broken_run_000000250.safetensors"
