"""/api/v1/sweeps/: one job per cell with the right stack, seed and prompt; every refusal creates nothing;
who may see and change a sweep; its settling from the cells (grids composed from real MP4s, downloaded with
Range), and the schema that types all of it. The real worker renders sweeps in tests/workers/test_sweeps.py."""

import io
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image
from rest_framework.test import APIClient

from webapp.jobs import services as job_services
from webapp.jobs.models import GenerationJob, JobStatus
from webapp.loras.models import Lora
from webapp.sweeps import services as sweep_services
from webapp.sweeps.models import Sweep, SweepGrid
from workers import tasks
from workers.celery_app import app as celery_app
from workers.grids import BLANK_COLOR
from workers.pipeline.video import png_bytes, write_mp4

URL = "/api/v1/sweeps/"
SMALL = {"width": 64, "height": 64, "num_frames": 5, "sample_steps": 2}
A, B = "job_a/job_a.safetensors", "job_b/job_b.safetensors"
pytestmark = pytest.mark.django_db


def create(api, axes, status=201, **fields):
    body = {"name": "compare", "prompts": [{"prompt": "sks walking", **SMALL}], "axes": axes, **fields}
    response = api.post(URL, {key: value for key, value in body.items() if value is not None}, format="json")
    assert response.status_code == status, response.json()
    return response.json()


def cells_in_queue_order(sweep_id) -> list[GenerationJob]:
    return list(GenerationJob.objects.filter(sweep_id=sweep_id).order_by("created_at", "pk"))


def stack(job) -> list[tuple[str, float]]:
    return [(jl.name, jl.multiplier) for jl in job.job_loras.all()]


# --- creating ------------------------------------------------------------------------------------------------------


def test_loras_by_multipliers_make_one_job_per_cell_grouped_by_lora(api):
    sweep = create(api, [{"field": "multiplier", "values": [0, 0.5, 1]}, {"field": "lora", "values": [A, B]}])
    assert (sweep["status"], sweep["counts"]["queued"], len(sweep["cells"])) == ("queued", 6, 6)
    assert [(axis["field"], axis["labels"]) for axis in sweep["axes"]] == [
        ("multiplier", ["0", "0.5", "1"]),
        ("lora", ["job_a/job_a", "job_b/job_b"]),
    ]
    assert sweep["url"].endswith(f"/sweeps/{sweep['id']}/")
    jobs = cells_in_queue_order(sweep["id"])
    # The lora axis is outermost whatever its place: the cells of one LoRA queue one after another.
    assert [stack(job) for job in jobs] == [
        [("job_a/job_a", 0.0)],
        [("job_a/job_a", 0.5)],
        [("job_a/job_a", 1.0)],
        [("job_b/job_b", 0.0)],
        [("job_b/job_b", 0.5)],
        [("job_b/job_b", 1.0)],
    ]
    assert [(job.sweep_cell["row"], job.sweep_cell["column"]) for job in jobs] == [
        (0, 0),
        (1, 0),
        (2, 0),
        (0, 1),
        (1, 1),
        (2, 1),
    ]
    # One random seed for the prompt that had none, the same in every cell, so they compare.
    seeds = {job.prompts[0]["seed"] for job in jobs}
    assert len(seeds) == 1 and sweep["prompts"][0]["seed"] in seeds
    cell = next(c for c in sweep["cells"] if (c["row"], c["column"]) == (1, 1))
    assert cell["axes"] == {"multiplier": 0.5, "lora": Lora.objects.get(name="job_b/job_b").pk}
    assert cell["labels"] == {"multiplier": "0.5", "lora": "job_b/job_b"}
    assert (cell["status"], cell["progress"], cell["outputs"]) == ("queued", 0.0, [])
    assert api.get(f"/api/v1/jobs/{cell['job']}/").json()["loras"][0]["multiplier"] == 0.5
    assert api.get(f"{URL}{sweep['id']}/").json() == sweep


def test_a_multiplier_axis_without_a_lora_axis_sets_the_first_base_lora(api):
    sweep = create(
        api,
        [{"field": "multiplier", "values": [0.3, 0.6]}],
        base_loras=[{"lora": A}, {"lora": B, "multiplier": 0.7}],
    )
    assert [stack(job) for job in cells_in_queue_order(sweep["id"])] == [
        [("job_a/job_a", 0.3), ("job_b/job_b", 0.7)],
        [("job_a/job_a", 0.6), ("job_b/job_b", 0.7)],
    ]
    assert [(lora["name"], lora["multiplier"]) for lora in sweep["base_loras"]] == [
        ("job_a/job_a", 1.0),
        ("job_b/job_b", 0.7),
    ]


def test_a_lora_axis_stacks_on_the_base_loras_at_each_loras_default(api):
    Lora.objects.filter(pk=create(api, [{"field": "lora", "values": [A]}])["axes"][0]["values"][0]).update(
        default_multiplier=0.8
    )
    sweep = create(api, [{"field": "lora", "values": [A]}], base_loras=[{"lora": B, "multiplier": 0.4}])
    assert [stack(job) for job in cells_in_queue_order(sweep["id"])] == [[("job_a/job_a", 0.8), ("job_b/job_b", 0.4)]]


def test_seed_by_prompt_axes_render_one_prompt_per_cell_at_each_seed(api):
    sweep = create(
        api,
        [
            {"field": "seed", "values": [1, 2]},
            {"field": "prompt", "values": ["a cat", {"prompt": "a dog on a long walk by the sea at dawn", **SMALL}]},
            {"field": "lora", "values": [A]},
        ],
        prompts=None,
    )
    jobs = cells_in_queue_order(sweep["id"])
    assert [(job.prompts[0]["prompt"], job.prompts[0]["seed"], len(job.prompts)) for job in jobs] == [
        ("a cat", 1, 1),
        ("a dog on a long walk by the sea at dawn", 1, 1),
        ("a cat", 2, 1),
        ("a dog on a long walk by the sea at dawn", 2, 1),
    ]
    assert sweep["prompts"] == []
    assert sweep["axes"][1]["labels"] == ["a cat", "a dog on a long walk by the sea at dawn"]
    assert {cell["layer"] for cell in sweep["cells"]} == {0}
    assert jobs[1].prompts[0]["width"] == 64 and jobs[0].prompts[0]["width"] == 1024  # each item as given


def test_a_prompt_set_fills_an_empty_prompt_axis(api):
    items = [{"prompt": "[trigger] at the beach", "seed": 5}, {"prompt": "[trigger] in the snow"}]
    prompt_set = api.post(
        "/api/v1/prompt-sets/", {"name": "places", "trigger_word": "sks", "items": items}, format="json"
    )
    assert prompt_set.status_code == 201, prompt_set.json()
    sweep = create(api, [{"field": "prompt", "values": []}], prompts=None, prompt_set=prompt_set.json()["id"])
    jobs = cells_in_queue_order(sweep["id"])
    assert [job.prompts[0]["prompt"] for job in jobs] == ["sks at the beach", "sks in the snow"]
    assert jobs[0].prompts[0]["seed"] == 5 and jobs[1].prompts[0]["seed"] != 42  # the sweep's random seed
    assert all(job.prompt_set_id == prompt_set.json()["id"] for job in jobs)


@pytest.mark.parametrize(
    "axes, fields, code, status",
    [
        ([], {}, "SWEEP_BAD_AXES", 400),
        (
            [{"field": f, "values": [1]} for f in ("seed", "multiplier", "lora")]
            + [{"field": "prompt", "values": ["x"]}],
            {"prompts": None},
            "SWEEP_BAD_AXES",
            400,
        ),
        ([{"field": "seed", "values": [1]}, {"field": "seed", "values": [2]}], {}, "SWEEP_BAD_AXES", 400),
        ([{"field": "seed", "values": []}], {}, "SWEEP_BAD_AXES", 400),
        ([{"field": "seed", "values": [1.5]}], {}, "SWEEP_BAD_AXES", 400),
        ([{"field": "multiplier", "values": ["strong"]}], {"base_loras": [{"lora": A}]}, "SWEEP_BAD_AXES", 400),
        ([{"field": "multiplier", "values": [3]}], {"base_loras": [{"lora": A}]}, "SWEEP_BAD_AXES", 400),
        ([{"field": "lora", "values": [True]}], {}, "SWEEP_BAD_AXES", 400),
        ([{"field": "prompt", "values": [{"neg": "no text"}]}], {"prompts": None}, "SWEEP_BAD_AXES", 400),
        ([{"field": "colour", "values": [1]}], {}, "SWEEP_BAD_AXES", 400),
        ([{"field": "seed", "values": list(range(65))}], {}, "SWEEP_TOO_MANY_CELLS", 400),
        (
            [{"field": "seed", "values": list(range(9))}, {"field": "lora", "values": [A] * 8}],
            {},
            "SWEEP_TOO_MANY_CELLS",
            400,
        ),
        ([{"field": "multiplier", "values": [0.5]}], {}, "SWEEP_NO_LORA", 400),
        ([{"field": "prompt", "values": ["a cat"]}], {}, "SWEEP_PROMPTS_TWICE", 400),
        ([{"field": "lora", "values": [A, "nowhere/none.safetensors"]}], {}, "LORA_NOT_FOUND", 404),
        ([{"field": "seed", "values": [1, 2]}], {"priority": 9}, "PRIORITY_NOT_ALLOWED", 403),
        ([{"field": "seed", "values": [1, 2]}], {"model": "sdxl"}, "UNKNOWN_MODEL", 400),
        ([{"field": "seed", "values": [1]}], {"prompts": None, "prompt_set": 999999}, "PROMPT_SET_NOT_FOUND", 404),
        ([{"field": "seed", "values": [1]}], {"prompts": None}, "NO_PROMPTS", 400),
        ([{"field": "lora", "values": [A, B]}], {"base_loras": [{"lora": B}]}, "LORA_DUPLICATE", 400),
        ([{"field": "seed", "values": [1]}], {"speed": "fast", "step_cache": 0.1}, "OPTIONS_CONFLICT", 400),
    ],
    ids=[
        "no-axes",
        "four-axes",
        "repeated-field",
        "empty-values",
        "float-seed",
        "text-multiplier",
        "multiplier-out-of-range",
        "bool-lora",
        "prompt-without-text",
        "unknown-field",
        "one-axis-too-long",
        "product-too-large",
        "multiplier-without-lora",
        "prompts-twice",
        "unknown-lora",
        "staff-priority",
        "unknown-model",
        "unknown-prompt-set",
        "no-prompts",
        "duplicate-lora-in-a-later-cell",
        "options-conflict",
    ],
)
def test_every_refusal_has_its_code_and_creates_nothing(api, axes, fields, code, status):
    body = {"name": "refused", "prompts": [{"prompt": "sks walking", **SMALL}], "axes": axes, **fields}
    response = api.post(URL, {k: v for k, v in body.items() if v is not None}, format="json")
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.json()
    assert not Sweep.objects.exists() and not GenerationJob.objects.exists()


def test_the_queued_job_cap_counts_every_cell(api, settings):
    settings.MAX_QUEUED_JOBS_PER_USER = 5
    create(api, [{"field": "seed", "values": [1, 2]}])
    refused = api.post(
        URL,
        {"name": "too many", "prompts": ["sks walking"], "axes": [{"field": "seed", "values": [1, 2, 3, 4]}]},
        format="json",
    )
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "TOO_MANY_QUEUED_JOBS")
    assert (Sweep.objects.count(), GenerationJob.objects.count()) == (1, 2)  # the third cell rolled back all four
    create(api, [{"field": "seed", "values": [1, 2, 3]}])  # exactly up to the cap
    assert GenerationJob.objects.filter(status=JobStatus.QUEUED).count() == 5


# --- who may see and change ----------------------------------------------------------------------------------------


def test_everyone_sees_a_sweep_only_its_owner_or_staff_cancel_and_delete_it(api, bob_api, staff_api, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["receiver.internal"]
    sweep = create(api, [{"field": "seed", "values": [1, 2]}], webhook="http://receiver.internal/alice")
    assert [s["id"] for s in bob_api.get(URL).json()["results"]] == [sweep["id"]]
    seen = bob_api.get(f"{URL}{sweep['id']}/").json()
    assert seen["cells"] == sweep["cells"] and seen["options"]["webhook"] is None
    assert sweep["options"]["webhook"] == "http://receiver.internal/alice"
    for response in (bob_api.post(f"{URL}{sweep['id']}/cancel/"), bob_api.delete(f"{URL}{sweep['id']}/")):
        assert (response.status_code, response.json()["error"]["code"]) == (403, "PERMISSION_DENIED")
    active = api.delete(f"{URL}{sweep['id']}/")
    assert (active.status_code, active.json()["error"]["code"]) == (409, "SWEEP_ACTIVE")

    canceled = staff_api.post(f"{URL}{sweep['id']}/cancel/").json()
    assert canceled["status"] == "canceled" and canceled["counts"]["canceled"] == 2
    assert api.post(f"{URL}{sweep['id']}/cancel/").json()["status"] == "canceled"  # again: no change
    assert tasks.settle_sweep(sweep["id"]) == "canceled"  # nothing rendered: no grid, still canceled
    assert api.get(f"{URL}{sweep['id']}/").json()["grids"] == []
    assert api.delete(f"{URL}{sweep['id']}/").status_code == 204
    assert not GenerationJob.objects.exists()
    missing = api.get(f"{URL}{sweep['id']}/")
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "SWEEP_NOT_FOUND")
    assert api.get(f"{URL}not-a-uuid/").status_code == 404
    assert APIClient().get(URL).status_code == 401


def test_listing_sweeps_costs_the_same_queries_however_many_there_are(
    api, bob_api, tmp_path, django_assert_max_num_queries
):
    def listed() -> int:
        with django_assert_max_num_queries(1000) as captured:
            page = bob_api.get(URL).json()["results"]
        assert all(sweep["cells"] and sweep["axes"][0]["labels"] for sweep in page)
        return len(captured)

    sweep = create(api, [{"field": "lora", "values": [A, B]}, {"field": "seed", "values": [1, 2]}])
    render(cells_in_queue_order(sweep["id"])[0], tmp_path, 60)
    one = listed()
    for _ in range(4):
        create(api, [{"field": "lora", "values": [A]}, {"field": "seed", "values": [3]}], base_loras=[{"lora": B}])
    with django_assert_max_num_queries(one):
        assert len(bob_api.get(URL).json()["results"]) == 5


def test_a_private_lora_of_the_axis_stays_unnamed_to_others(api, bob_api, user):
    sweep = create(api, [{"field": "lora", "values": [A, B]}])
    private = Lora.objects.get(name="job_a/job_a")
    Lora.objects.filter(pk=private.pk).update(owner=user, visibility="private")
    axis = bob_api.get(f"{URL}{sweep['id']}/").json()["axes"][0]
    assert (axis["values"][0], axis["labels"][0]) == (None, "private LoRA")
    assert axis["labels"][1] == "job_b/job_b"
    assert api.get(f"{URL}{sweep['id']}/").json()["axes"][0]["labels"][0] == "job_a/job_a"


# --- settling ------------------------------------------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch):
    """The broker messages of committed transactions: (task, args, queue)."""
    messages = []
    monkeypatch.setattr(celery_app, "send_task", lambda name, args, queue, **kw: messages.append((name, args, queue)))
    return messages


def render(job: GenerationJob, tmp_path: Path, shade: int) -> None:
    """What a worker does for a cell, with a real MP4 and poster: start, one output per prompt, succeed."""
    running = job_services.job_start(job_id=job.pk, worker="w@host")
    frames = np.full((5, 64, 64, 3), shade, np.uint8)
    frames[:, 16:48, 8:24] = 255 - shade
    for index, prompt in enumerate(running.prompts):
        mp4 = write_mp4(frames, tmp_path / f"{job.pk}-{index}.mp4", fps=8)
        video = default_storage.save(f"outputs/{job.pk}/{index:03d}.mp4", ContentFile(mp4.read_bytes()))
        poster = default_storage.save(f"outputs/{job.pk}/{index:03d}.png", ContentFile(png_bytes(frames[0])))
        job_services.job_add_output(
            job=running, index=index, video=video, poster=poster, webp="", params=prompt, scheduler="euler", record={}
        )
    job_services.job_succeed(job=running, timings={})


def test_each_move_of_a_cell_settles_its_sweep_after_commit(api, sent, django_capture_on_commit_callbacks):
    sweep = create(api, [{"field": "seed", "values": [1, 2]}])
    first, second = cells_in_queue_order(sweep["id"])
    with django_capture_on_commit_callbacks(execute=True):
        job_services.job_start(job_id=first.pk, worker="w@host")
    assert sent == [("workers.settle_sweep", [sweep["id"]], "celery")]
    assert tasks.settle_sweep(sweep["id"]) == "running"
    with django_capture_on_commit_callbacks(execute=True):
        job_services.job_cancel(job=second)
    assert sent[-1] == ("workers.settle_sweep", [sweep["id"]], "celery")
    with django_capture_on_commit_callbacks(execute=True):
        GenerationJob.objects.filter(pk=first.pk).update(status=JobStatus.FAILED)  # as if its settle were lost
        Sweep.objects.filter(pk=sweep["id"]).update(status="running")
        assert tasks.reconcile_jobs() == {"requeued": 0, "resent": 0}
    assert sent[-1] == ("workers.settle_sweep", [sweep["id"]], "celery")  # the reconciler makes up for it


def test_grids_are_composed_once_every_cell_finished_and_again_after_a_retry(api, tmp_path):
    sweep = create(
        api, [{"field": "seed", "values": [1, 2]}, {"field": "lora", "values": [A, B]}], prompts=["one", "two"]
    )
    jobs = cells_in_queue_order(sweep["id"])
    for shade, job in zip((30, 90, 150), jobs[:3]):
        render(job, tmp_path, shade)
    assert tasks.settle_sweep(sweep["id"]) == "running"
    job_services.job_cancel(job=jobs[3])
    assert tasks.settle_sweep(sweep["id"]) == "succeeded"
    assert tasks.settle_sweep(sweep["id"]) == "current"  # a second delivery changes nothing

    done = api.get(f"{URL}{sweep['id']}/").json()
    assert (done["status"], done["counts"]["succeeded"], done["counts"]["canceled"]) == ("succeeded", 3, 1)
    assert [(g["prompt_index"], g["layer"]) for g in done["grids"]] == [(0, 0), (1, 0)]
    grid = done["grids"][0]
    assert (grid["num_frames"], grid["fps"]) == (5, 8) and grid["width"] > 2 * 64
    cell = next(c for c in done["cells"] if c["status"] == "succeeded")
    assert cell["progress"] == 1.0 and [o["index"] for o in cell["outputs"]] == [0, 1]

    whole = api.get(grid["video_url"])
    body = b"".join(whole.streaming_content)
    assert (whole.status_code, whole["Content-Type"]) == (200, "video/mp4") and body[4:8] == b"ftyp"
    part = api.get(grid["video_url"], HTTP_RANGE="bytes=0-99")
    assert (part.status_code, part["Content-Range"]) == (206, f"bytes 0-99/{len(body)}")
    assert b"".join(part.streaming_content) == body[:100]
    image = api.get(grid["image_url"])
    assert (image.status_code, image["Content-Type"]) == (200, "image/png")
    sheet = np.asarray(Image.open(io.BytesIO(b"".join(image))).convert("RGB"))
    assert sheet.shape[:2] == (grid["height"], grid["width"])
    assert (sheet == BLANK_COLOR).all(axis=-1).sum() > 0.5 * 64 * 64  # the canceled cell's blank tile

    # A retried cell puts the sweep back to running; once it renders, the grids are made again.
    old = [g.video.name for g in SweepGrid.objects.filter(sweep_id=sweep["id"])]
    job_services.job_retry(job=jobs[3], actor=None)
    assert tasks.settle_sweep(sweep["id"]) == "running"
    render(jobs[3], tmp_path, 210)
    assert tasks.settle_sweep(sweep["id"]) == "succeeded"
    again = api.get(f"{URL}{sweep['id']}/").json()
    assert again["counts"]["succeeded"] == 4 and len(again["grids"]) == 2
    assert not any(default_storage.exists(name) for name in old)  # the replaced grids' files are gone
    assert api.get(grid["video_url"]).status_code == 404


def test_a_grid_that_cannot_be_made_fails_the_sweep_and_shows_no_grid(api, tmp_path):
    sweep = create(api, [{"field": "seed", "values": [1, 2]}])
    for job in cells_in_queue_order(sweep["id"]):
        render(job, tmp_path, 60)
    default_storage.delete(GenerationJob.objects.filter(sweep_id=sweep["id"]).first().outputs.get().video.name)
    assert tasks.settle_sweep(sweep["id"]) == "GRID_FAILED"
    failed = api.get(f"{URL}{sweep['id']}/").json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "GRID_FAILED" and failed["grids"] == []
    assert failed["error"]["message"] and failed["finished_at"]
    assert tasks.settle_sweep(sweep["id"]) == "failed"  # the same cells are not tried again
    assert not SweepGrid.objects.exists()


@pytest.mark.parametrize("fails", [False, True], ids=["stored", "failed"])
def test_a_composer_whose_cells_changed_meanwhile_stores_nothing_and_has_them_settled_again(
    api, tmp_path, monkeypatch, sent, django_capture_on_commit_callbacks, fails
):
    sweep = create(api, [{"field": "seed", "values": [1, 2]}])
    jobs = cells_in_queue_order(sweep["id"])
    render(jobs[0], tmp_path, 60)
    job_services.job_cancel(job=jobs[1])
    plans = sweep_services.grid_plans

    def rerendered_meanwhile(sweep, *, folder):
        yield from plans(sweep, folder=folder)
        job_services.job_retry(job=jobs[1], actor=None)  # retried and rendered again while the grid was made
        render(jobs[1], tmp_path, 200)
        if fails:
            raise OSError("disk full")

    monkeypatch.setattr(sweep_services, "grid_plans", rerendered_meanwhile)
    with django_capture_on_commit_callbacks(execute=True):
        assert tasks.settle_sweep(sweep["id"]) == "superseded"
    assert sent[-1] == ("workers.settle_sweep", [sweep["id"]], "celery")  # the cells as they are now, next
    shown = api.get(f"{URL}{sweep['id']}/").json()
    assert (shown["status"], shown["grids"], shown["error"]) == ("running", [], None)
    assert not SweepGrid.objects.exists()
    assert default_storage.listdir(f"sweeps/{sweep['id']}") == ([], [])  # the stale grid's files are gone

    monkeypatch.setattr(sweep_services, "grid_plans", plans)
    assert tasks.settle_sweep(sweep["id"]) == "succeeded"
    assert len(api.get(f"{URL}{sweep['id']}/").json()["grids"]) == 1


def test_deleting_a_cell_composes_the_grids_again_without_it(api, tmp_path, sent, django_capture_on_commit_callbacks):
    sweep = create(api, [{"field": "seed", "values": [1, 2]}])
    jobs = cells_in_queue_order(sweep["id"])
    for job in jobs:
        render(job, tmp_path, 60)
    assert tasks.settle_sweep(sweep["id"]) == "succeeded"
    before = SweepGrid.objects.get(sweep_id=sweep["id"]).video.name

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/v1/jobs/{jobs[1].pk}/").status_code == 204
    assert sent[-1] == ("workers.settle_sweep", [sweep["id"]], "celery")
    assert tasks.settle_sweep(sweep["id"]) == "succeeded"
    after = api.get(f"{URL}{sweep['id']}/").json()
    assert after["counts"]["succeeded"] == 1 and len(after["cells"]) == 1 and len(after["grids"]) == 1
    assert SweepGrid.objects.get(sweep_id=sweep["id"]).video.name != before and not default_storage.exists(before)


def test_a_failed_sweep_composes_again_once_its_cells_change(api, tmp_path):
    sweep = create(api, [{"field": "seed", "values": [1, 2, 3]}])
    jobs = cells_in_queue_order(sweep["id"])
    for job in jobs:
        render(job, tmp_path, 60)
    default_storage.delete(jobs[2].outputs.get().video.name)
    assert tasks.settle_sweep(sweep["id"]) == "GRID_FAILED"
    assert tasks.settle_sweep(sweep["id"]) == "failed"
    job_services.job_delete(job=GenerationJob.objects.get(pk=jobs[2].pk))  # no later finish, yet other cells
    assert tasks.settle_sweep(sweep["id"]) == "succeeded"
    assert len(api.get(f"{URL}{sweep['id']}/").json()["grids"]) == 1


def test_a_composing_sweep_cannot_be_deleted(api, tmp_path):
    sweep = create(api, [{"field": "seed", "values": [1]}])
    render(cells_in_queue_order(sweep["id"])[0], tmp_path, 60)
    Sweep.objects.filter(pk=sweep["id"]).update(status="composing")
    refused = api.delete(f"{URL}{sweep['id']}/")
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "SWEEP_ACTIVE")
    assert refused.json()["error"]["details"]["status"] == "composing" and GenerationJob.objects.exists()


# --- the schema ----------------------------------------------------------------------------------------------------


def test_the_schema_types_every_field_of_a_sweep(api):
    schema = api.get("/api/schema/?format=json").json()
    components, paths = schema["components"]["schemas"], schema["paths"]
    assert set(components["Sweep"]["properties"]) >= {
        "id", "name", "status", "model", "axes", "base_loras", "prompts", "options", "counts", "cells", "grids",
        "error", "created_at", "finished_at", "url",
    }  # fmt: skip
    assert components["SweepStatusEnum"]["enum"] == [
        "queued",
        "running",
        "composing",
        "succeeded",
        "failed",
        "canceled",
    ]
    cell = components["SweepCell"]["properties"]
    assert set(cell) >= {"row", "column", "layer", "axes", "job", "status", "progress", "error_code", "outputs"}
    assert cell["status"]["$ref"].endswith("/JobStatusEnum")
    assert set(components["SweepGrid"]["properties"]) >= {"prompt_index", "layer", "video_url", "image_url", "fps"}
    assert set(components["SweepCounts"]["properties"]) == {"queued", "running", "succeeded", "failed", "canceled"}
    assert components["SweepAxisFieldEnum"]["enum"] == ["lora", "multiplier", "seed", "prompt"]
    assert {"/api/v1/sweeps/", "/api/v1/sweeps/{id}/", "/api/v1/sweeps/{id}/cancel/"} <= set(paths)
    grid_file = next(p for p in paths if p.startswith("/api/v1/sweeps/") and "grids" in p)
    assert set(paths[grid_file]["get"]["responses"]["200"]["content"]) == {"video/mp4", "image/png"}
    assert paths["/api/v1/sweeps/"]["post"]["responses"]["201"]["content"]["application/json"]["schema"][
        "$ref"
    ].endswith("/Sweep")
