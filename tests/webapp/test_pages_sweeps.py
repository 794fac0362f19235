"""The sweep pages without a browser: the list, creating a sweep from the form (one job per cell, the
API's errors next to the fields), pre-fill from a training run and from the submit page, the sweep's
boards for each viewer, the status fragment it polls, Cancel, and "Render at full settings"."""

import re

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from tests.conftest import TINY_SHAPE
from tests.webapp.conftest import client_of
from webapp.jobs.models import GenerationJob, JobOutput
from webapp.loras.models import Lora, Visibility
from webapp.loras.services import lora_resolve
from webapp.prompts.services import prompt_set_create
from webapp.sweeps.models import Sweep, SweepGrid
from workers.pipeline.checkpoints import write_aitoolkit_lora

pytestmark = pytest.mark.django_db
SIZE = {"width": "128", "height": "128", "num_frames": "9", "sample_steps": "4"}


@pytest.fixture
def member(alice):
    return client_of(alice)


@pytest.fixture
def loras(tiny_model, lora_files):
    return lora_resolve(ref="job_a/job_a.safetensors"), lora_resolve(ref="job_b/job_b.safetensors")


def run_checkpoint(run: str, step: int | None, *, seed: int, owner=None, private=False) -> Lora:
    """A checkpoint of training run `run` at `step` (the final one without), registered from LORA_ROOT."""
    from django.conf import settings

    name = f"{run}_{step:09d}" if step is not None else run
    write_aitoolkit_lora(settings.LORA_ROOT / run / f"{name}.safetensors", shape=TINY_SHAPE, seed=seed, scale=0.3)
    lora = lora_resolve(ref=f"{run}/{name}.safetensors", owner=owner)
    Lora.objects.filter(pk=lora.pk).update(
        training_run=run,
        training_step=step,
        visibility=Visibility.PRIVATE if private else Visibility.TEAM,
        owner=owner,
    )
    lora.refresh_from_db()
    return lora


def sweep_form(**fields) -> dict:
    """The new-sweep form as a person fills it in: a name, prompts, axes, options."""
    data = {"name": "a vs b", "prompts": "a cat on a beach\na dog in the snow", "scheduler": "auto"}
    data |= {"speed": "exact", "preset": "standard", "priority": "0", **SIZE}
    return data | fields


def create(client, **fields) -> Sweep:
    response = client.post("/sweeps/new/", sweep_form(**fields))
    assert response.status_code == 302, response.content.decode()
    sweep = Sweep.objects.latest("created_at")
    assert response["Location"] == f"/sweeps/{sweep.pk}/"
    return sweep


def cell_ids(page: str) -> list[str]:
    return re.findall(r'<div class="sweep-cell" id="cell-([0-9a-f-]{36})"', page)


def test_pages_need_a_signed_in_member(client, alice, member, loras):
    a, b = loras
    sweep = create(member, **{"axis-0-field": "lora", "axis-0-loras": [a.pk, b.pk]})
    for url in ["/sweeps/", "/sweeps/new/", f"/sweeps/{sweep.pk}/", f"/sweeps/{sweep.pk}/status/"]:
        assert client.get(url).status_code == 302, url
    assert client.post(f"/sweeps/{sweep.pk}/cancel/").status_code == 302
    assert set(sweep.jobs.values_list("status", flat=True)) == {"queued"}


def test_the_form_creates_one_job_per_cell(member, alice, loras):
    a, b = loras
    page = member.get("/sweeps/new/").content.decode()
    assert 'name="axis-0-field"' in page and 'name="axis-2-loras"' in page and 'name="base-0-lora"' in page
    sweep = create(
        member,
        **{"axis-0-field": "lora", "axis-0-loras": [a.pk, b.pk], "axis-1-field": "multiplier"},
        **{"axis-1-values": "0.5, 0.8,1.0"},
    )
    jobs = list(sweep.jobs.all())
    assert len(jobs) == 6 and sweep.owner == alice and sweep.name == "a vs b"
    places = {(job.sweep_cell["row"], job.sweep_cell["column"]) for job in jobs}
    assert places == {(row, column) for row in (0, 1) for column in (0, 1, 2)}
    stacks = {tuple((jl.lora_id, jl.multiplier) for jl in job.job_loras.all()) for job in jobs}
    assert stacks == {((lora.pk, m),) for lora in (a, b) for m in (0.5, 0.8, 1.0)}
    for job in jobs:  # both prompts in every cell, at the size typed, with one seed for the sweep
        assert [p["prompt"] for p in job.prompts] == ["a cat on a beach", "a dog in the snow"]
        sizes = {(p["width"], p["height"], p["num_frames"], p["sample_steps"]) for p in job.prompts}
        assert sizes == {(128, 128, 9, 4)}
    assert len({p["seed"] for job in jobs for p in job.prompts}) == 1
    page = member.get(f"/sweeps/{sweep.pk}/").content.decode()
    assert sorted(cell_ids(page)) == sorted(str(job.pk) for job in jobs)
    assert "job_a" in page and "job_b" in page and "0.8" in page  # row and column headers
    assert re.search(r'<select name="prompt">.*a dog in the snow', page, re.S)  # the prompt selector


def test_seeds_against_a_base_lora_and_a_third_axis(member, loras):
    a, b = loras
    sweep = create(
        member,
        **{"axis-0-field": "seed", "axis-0-values": "1 2", "axis-1-field": "multiplier", "axis-1-values": "0.5 1"},
        **{"axis-2-field": "prompt", "axis-2-values": "a red fox\na blue whale", "prompts": ""},
        **{"base-0-lora": a.pk, "base-0-multiplier": ""},
    )
    assert sweep.jobs.count() == 8
    page = member.get(f"/sweeps/{sweep.pk}/").content.decode()
    assert page.count('<table class="sweep-grid">') == 2 and "a red fox" in page and "a blue whale" in page


def test_errors_show_next_to_their_fields(member, loras, settings):
    a, _ = loras
    response = member.post("/sweeps/new/", sweep_form())  # no axis
    assert response.status_code == 400 and "SWEEP_BAD_AXES" in response.content.decode()
    page = member.post("/sweeps/new/", sweep_form(name="", **{"axis-0-field": "seed", "axis-0-values": "1"}))
    page = page.content.decode()
    assert re.search(r'class="sweep-name">Name .*?<span class="error">[^<]+</span>', page, re.S)
    assert Sweep.objects.count() == 0 and GenerationJob.objects.count() == 0
    # a value of the wrong type: the message next to that axis' values, the values kept
    page = member.post("/sweeps/new/", sweep_form(**{"axis-0-field": "seed", "axis-0-values": "1, two"})).content
    axis = page.decode().split('data-row="axis"')[1]
    assert "SWEEP_BAD_AXES" in page.decode() and "two" in axis and '<span class="error">' in axis
    # more cells than a sweep may have
    settings.SWEEP_MAX_CELLS = 3
    page = member.post("/sweeps/new/", sweep_form(**{"axis-0-field": "seed", "axis-0-values": "1 2 3 4"})).content
    assert "SWEEP_TOO_MANY_CELLS" in page.decode() and "at most 3 cells" in page.decode()
    # a multiplier axis with nothing to apply it to
    page = member.post("/sweeps/new/", sweep_form(**{"axis-0-field": "multiplier", "axis-0-values": "0.5 1"})).content
    assert "SWEEP_NO_LORA" in page.decode()
    # a size typed for a prompt set's prompts, which keep their own
    prompt_set = prompt_set_create(owner=None, name="beaches", items=[{"prompt": "a beach", "width": 256}])
    page = member.post("/sweeps/new/", sweep_form(prompts="", prompt_set=prompt_set.pk, **{"axis-0-field": "seed"}))
    assert "keep their own size" in page.content.decode().split('class="prompt-set"')[1]
    assert Sweep.objects.count() == 0


def test_prefill_from_a_training_run_lists_its_checkpoints_by_step(member, alice, bob, tiny_model):
    later = run_checkpoint("mrx_run", 1000, seed=11)
    final = run_checkpoint("mrx_run", None, seed=12)
    first = run_checkpoint("mrx_run", 500, seed=13)
    hidden = run_checkpoint("mrx_run", 750, seed=14, owner=bob, private=True)
    run_checkpoint("other_run", 500, seed=15)
    page = member.get("/sweeps/new/?run=mrx_run").content.decode()
    assert 'value="Compare checkpoints of mrx_run"' in page
    axis = page.split('name="axis-0-loras"')[1].split("</select>")[0]
    selected = re.findall(r'<option value="(\d+)"[^>]*selected', axis)
    assert selected == [str(first.pk), str(later.pk), str(final.pk)]  # by step, the final one last
    assert f'value="{hidden.pk}"' not in axis  # bob's private checkpoint is not alice's to use
    assert '<optgroup label="mrx_run">' in axis and '<optgroup label="other_run">' in axis
    second = page.split('data-row="axis"')[2]
    assert '<option value="multiplier" selected>' in second and "1.0</textarea>" in second
    # the form as pre-filled creates the comparison
    data = {"name": "Compare checkpoints of mrx_run", "prompts": "mrx walking", "axis-0-field": "lora"}
    data |= {"axis-0-loras": selected, "axis-1-field": "multiplier", "axis-1-values": "1.0", **SIZE}
    assert member.post("/sweeps/new/", data).status_code == 302
    assert Sweep.objects.get().jobs.count() == 3


def test_compare_as_a_sweep_carries_the_submit_pages_fields(member, loras):
    a, b = loras
    assert "Compare as a sweep" in member.get("/jobs/new/").content.decode()
    submit_page = {"prompt_rows": "3", "prompt-0-prompt": "a cat\non a beach", "prompt-0-width": "192"}
    submit_page |= {"prompt-1-prompt": "a quiet harbour", "lora-0-lora": b.pk, "lora-0-multiplier": "0.7"}
    submit_page |= {"scheduler": "unipc", "speed": "exact", "priority": "2", "compare": "1"}
    response = member.post("/sweeps/new/", submit_page)
    page = response.content.decode()
    assert response.status_code == 200 and Sweep.objects.count() == 0
    assert "a cat on a beach\na quiet harbour</textarea>" in page
    assert re.search(r'name="width"[^>]*value="192"', page)
    assert re.search(rf'<option value="{b.pk}"[^>]*selected>', page.split('name="base-0-lora"')[1])
    assert 'name="base-0-multiplier" value="0.7"' in page
    assert '<option value="unipc" selected>' in page and f'value="Compare {b.name}"' in page


def test_another_member_sees_the_sweep_without_its_buttons_or_private_loras(member, alice, bob, loras):
    a, _ = loras
    Lora.objects.filter(pk=a.pk).update(visibility=Visibility.PRIVATE, owner=alice)
    sweep = create(member, **{"axis-0-field": "seed", "axis-0-values": "1 2", "base-0-lora": a.pk})
    assert f"/sweeps/{sweep.pk}/cancel/" in member.get(f"/sweeps/{sweep.pk}/").content.decode()
    theirs = client_of(bob)
    page = theirs.get(f"/sweeps/{sweep.pk}/").content.decode()
    assert len(cell_ids(page)) == 2 and f"/sweeps/{sweep.pk}/cancel/" not in page
    listed = theirs.get("/sweeps/").content.decode()
    assert f"/sweeps/{sweep.pk}/" in listed and "a vs b" in listed and "2 cells" in listed
    refused = theirs.post(f"/sweeps/{sweep.pk}/cancel/", follow=True)
    assert "PERMISSION_DENIED" in refused.content.decode()
    assert set(sweep.jobs.values_list("status", flat=True)) == {"queued"}
    assert theirs.get("/sweeps/00000000-0000-0000-0000-000000000000/").status_code == 404
    assert theirs.get("/sweeps/00000000-0000-0000-0000-000000000000/status/").status_code == 404


def test_the_page_polls_its_unfinished_cells_and_stops_once_all_finished(member, loras):
    sweep = create(member, **{"axis-0-field": "seed", "axis-0-values": "1 2"})
    first, second = sweep.jobs.order_by("sweep_cell__row")
    page = member.get(f"/sweeps/{sweep.pk}/").content.decode()
    assert 'hx-trigger="every 2s"' in page and page.count('name="pending"') == 2
    GenerationJob.objects.filter(pk=first.pk).update(
        status="running", progress={"prompt": 0, "prompts": 2, "step": 2, "steps": 4, "fraction": 0.25}
    )
    GenerationJob.objects.filter(pk=second.pk).update(status="succeeded", progress={"fraction": 1.0})
    JobOutput.objects.create(
        job=second, index=1, video="outputs/x/001.mp4", poster="outputs/x/001.png", width=128, height=128,
        num_frames=9, fps=16, seed=1, scheduler="euler", record={},
    )  # fmt: skip
    fragment = member.get(f"/sweeps/{sweep.pk}/status/?prompt=1&pending={first.pk}&pending={second.pk}")
    text = fragment.content.decode()
    assert text.count('hx-swap-oob="true"') == 2 and 'hx-trigger="every 2s"' in text
    running = text.split(f'id="cell-{first.pk}"')[1].split('class="sweep-cell"')[0]
    assert "badge running" in running and 'value="25"' in running
    done = text.split(f'id="cell-{second.pk}"')[1]
    assert "<video" in done and f"/api/v1/outputs/{second.outputs.get().pk}/video" in done
    # cells the page no longer shows as unfinished are not sent again
    assert member.get(f"/sweeps/{sweep.pk}/status/?pending={first.pk}").content.decode().count("hx-swap-oob") == 1
    GenerationJob.objects.filter(pk=first.pk).update(status="failed", error_code="OOM", progress={"fraction": 0.5})
    Sweep.objects.filter(pk=sweep.pk).update(status="succeeded")
    text = member.get(f"/sweeps/{sweep.pk}/status/?pending={first.pk}").content.decode()
    assert "hx-trigger" not in text and "OOM" in text and 'name="pending"' not in text


def test_cancel_cancels_every_unfinished_cell(member, loras):
    sweep = create(member, **{"axis-0-field": "seed", "axis-0-values": "1 2 3"})
    GenerationJob.objects.filter(pk=sweep.jobs.first().pk).update(status="succeeded")
    response = member.post(f"/sweeps/{sweep.pk}/cancel/", follow=True)
    assert response.redirect_chain[-1][0] == f"/sweeps/{sweep.pk}/" and "canceled" in response.content.decode()
    assert sorted(sweep.jobs.values_list("status", flat=True)) == ["canceled", "canceled", "succeeded"]
    sweep.refresh_from_db()
    assert sweep.status == "canceled"
    assert f"/sweeps/{sweep.pk}/cancel/" not in member.get(f"/sweeps/{sweep.pk}/").content.decode()


def test_render_at_full_settings_opens_the_submit_page_with_the_cells_stack_and_prompt(member, loras):
    a, b = loras
    sweep = create(
        member,
        **{"axis-0-field": "lora", "axis-0-loras": [a.pk], "axis-1-field": "multiplier", "axis-1-values": "0.6"},
        **{"base-0-lora": b.pk, "base-0-multiplier": "0.3"},
    )
    job = sweep.jobs.get()
    page = member.get(f"/sweeps/{sweep.pk}/?prompt=1").content.decode()
    link = re.search(r'href="([^"]+)"[^>]*>Render at full settings', page)[1].replace("&amp;", "&")
    assert link == f"/jobs/new/?from={job.pk}&preset=standard&prompt=1"
    submit = member.get(link).content.decode()
    assert "a dog in the snow</textarea>" in submit and "a cat on a beach" not in submit
    assert re.search(rf'<option value="{a.pk}"[^>]*selected>', submit.split('name="lora-0-lora"')[1])
    assert 'name="lora-0-multiplier" value="0.6"' in submit and 'name="lora-1-multiplier" value="0.3"' in submit
    assert f'href="/jobs/{job.pk}/"' in page  # and the cell's own job page


def test_grid_downloads_once_the_grids_exist(member, loras):
    sweep = create(member, prompts="a cat on a beach", **{"axis-0-field": "seed", "axis-0-values": "1 2"})
    assert "grids:" not in member.get(f"/sweeps/{sweep.pk}/").content.decode()
    video = default_storage.save(f"sweeps/{sweep.pk}/grid.mp4", ContentFile(b"\x00\x00\x00\x18ftypmp42"))
    image = default_storage.save(f"sweeps/{sweep.pk}/grid.png", ContentFile(b"\x89PNG\r\n\x1a\n"))
    grid = SweepGrid.objects.create(
        sweep=sweep, prompt_index=0, video=video, image=image, width=256, height=128, num_frames=9, fps=16
    )
    GenerationJob.objects.filter(sweep=sweep).update(status="succeeded")
    Sweep.objects.filter(pk=sweep.pk).update(status="succeeded")
    page = member.get(f"/sweeps/{sweep.pk}/").content.decode()
    for kind, content_type in (("video", "video/mp4"), ("image", "image/png")):
        url = f"/api/v1/sweeps/{sweep.pk}/grids/{grid.pk}/{kind}"
        assert f'href="{url}" download' in page
        response = member.get(url)
        assert response.status_code == 200 and response["Content-Type"] == content_type
    assert "hx-trigger" not in page and f"/sweeps/{sweep.pk}/cancel/" not in page  # finished


def test_a_draft_cell_at_full_settings_drops_what_the_draft_fixed(member, loras, settings):
    a, b = loras
    settings.DRAFT_LORA = "job_b/job_b.safetensors"
    fields = {"axis-0-field": "lora", "axis-0-loras": [a.pk], "axis-1-field": "multiplier", "axis-1-values": "0.6"}
    sweep = create(member, preset="draft", sample_steps="", **fields)
    job = sweep.jobs.get()
    assert job.preset == "draft" and [jl.lora_id for jl in job.job_loras.all()] == [a.pk, b.pk]
    link = re.search(
        r'href="([^"]+)"[^>]*>Render at full settings', member.get(f"/sweeps/{sweep.pk}/").content.decode()
    )
    submit = member.get(link[1].replace("&amp;", "&")).content.decode()
    assert re.search(r'<option value="standard"[^>]*selected>', submit.split('name="preset"')[1])
    assert re.search(r'<option value="auto"[^>]*selected>', submit.split('name="scheduler"')[1])
    for name in ("sample_steps", "guidance_scale"):  # empty: the defaults, not the draft's 4 steps without CFG
        assert not re.search(rf'name="prompt-0-{name}"[^>]* value=', submit)
    assert 'name="lora-0-multiplier" value="0.6"' in submit and 'name="lora-1-multiplier" value' not in submit
