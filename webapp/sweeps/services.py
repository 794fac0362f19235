"""Every change of a sweep: its cells made as ordinary jobs in one transaction, its status settled from
theirs, its grids composed once every cell has finished, cancel and delete.

A sweep follows its cells. After each move of a cell (`webapp.jobs.services.sweep_settle_enqueue`) and
from the reconciler, `sweep_settle` runs on the CPU queue: queued until a cell starts, running while
any cell is unfinished; then one settle claims the sweep by an atomic update (composing), composes one
grid per prompt and value of a third axis from the cells' videos, stores the files, then the rows, and
ends succeeded (canceled when its owner canceled it) or failed with GRID_FAILED. `grids_fingerprint`
names the finished cells the last composition was made from (a failed one's too, so those very cells are
not tried again): a retried cell puts the sweep back to running and a deleted one settles it again, and
its grids are made again from the cells as they are then. A composer stores its grids only if its cells
are still those it composed.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from webapp.core.errors import ApiError, Conflict, NotFound
from webapp.core.permissions import require_manage
from webapp.jobs.models import FINISHED, GenerationJob, JobStatus
from webapp.jobs.selectors import PRIVATE_LORA
from webapp.jobs.services import (
    JOB_OPTIONS,
    IllegalTransition,
    job_cancel,
    job_delete,
    job_spec,
    job_submit,
    prompt_set_items,
    sweep_settle_enqueue,
)
from webapp.loras.models import Lora, Visibility
from webapp.loras.services import lora_resolve
from webapp.prompts.models import PromptSet
from workers.pipeline.params import random_seed

from .models import AXIS_FIELDS, Sweep, SweepGrid, SweepStatus

log = logging.getLogger(__name__)
LORA, MULTIPLIER, SEED, PROMPT = AXIS_FIELDS
ACTIVE = (SweepStatus.QUEUED, SweepStatus.RUNNING)
FINAL = (SweepStatus.SUCCEEDED, SweepStatus.FAILED, SweepStatus.CANCELED)
PROMPT_LABEL_CHARS, TITLE_PROMPT_CHARS = 40, 80


def too_many_cells(cells: int) -> ApiError:
    return ApiError(
        "SWEEP_TOO_MANY_CELLS",
        f"A sweep may have at most {settings.SWEEP_MAX_CELLS} cells; this one has {cells}.",
        details={"cells": cells, "max_cells": settings.SWEEP_MAX_CELLS},
    )


def shorten(text: str, chars: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


def axis_label(field: str, value) -> str:
    """The short label of an axis value (a LoRA's is its name, given by the caller)."""
    if field == MULTIPLIER:
        return f"{value:g}"
    if field == PROMPT:
        return shorten(value["prompt"], PROMPT_LABEL_CHARS)
    return str(value)


# --- create -----------------------------------------------------------------------------------------------------


@transaction.atomic
def sweep_create(*, owner, data: dict, request: dict) -> Sweep:
    """A sweep and its cells from a request SweepCreateSerializer validated: one job per cell of the axes'
    product, built by job_spec and job_submit like every other job (so every limit of a submit holds, the
    queued-job cap counting each cell), grouped by LoRA so cells sharing one queue one after another.
    All cells or none: any refusal rolls the whole sweep back."""
    axes = [dict(axis) for axis in data["axes"]]
    fields = [axis["field"] for axis in axes]
    prompt_set = _prompt_set(data.get("prompt_set"))
    prompts = list(data.get("prompts") or [])
    if PROMPT in fields:
        prompt_axis = axes[fields.index(PROMPT)]
        if prompts or (prompt_set is not None and prompt_axis["values"]):
            raise ApiError(
                "SWEEP_PROMPTS_TWICE",
                "A prompt axis names the prompts: give no prompts, and a prompt set only with empty axis values.",
            )
        if not prompt_axis["values"]:
            if prompt_set is None:
                raise ApiError("SWEEP_BAD_AXES", "The prompt axis has no values; give them, or a prompt set.")
            prompt_axis["values"] = prompt_set_items(prompt_set, preset=data.get("preset"))
    elif prompt_set is not None:
        prompts = prompt_set_items(prompt_set, preset=data.get("preset"))
    if not (prompts or PROMPT in fields) or not all(axis["values"] for axis in axes):
        raise ApiError("NO_PROMPTS", "A sweep needs prompts: inline, from a prompt set, or as a prompt axis.")
    cells = math.prod(len(axis["values"]) for axis in axes)
    if cells > settings.SWEEP_MAX_CELLS:
        raise too_many_cells(cells)
    if MULTIPLIER in fields and LORA not in fields and not data["base_loras"]:
        raise ApiError("SWEEP_NO_LORA", "A multiplier axis needs a lora axis or a base LoRA to apply to.")

    seed = random_seed()  # one for every prompt without a seed, so all cells compare

    def seeded(item: dict) -> dict:
        return {**item, "seed": seed} if item.get("seed") in (None, -1) else dict(item)

    rows: dict[str, Lora | str] = {}  # reference -> row, or the URL the CPU queue fetches before rendering

    def lora_of(ref: str) -> Lora | str:
        if ref not in rows:
            rows[ref] = lora_resolve(ref=ref, owner=owner, fetch=False) or ref
        return rows[ref]

    prompts = [seeded(item) for item in prompts]
    values = {axis["field"]: _axis_values(axis, seeded=seeded, lora_of=lora_of) for axis in axes}
    base = [(lora_of(item["lora"]), item.get("multiplier")) for item in data["base_loras"]]
    options = {name: data[name] for name in JOB_OPTIONS if name in data}
    trigger_word = data.get("trigger_word") or (prompt_set.trigger_word if prompt_set else None) or None
    sweep = Sweep.objects.create(
        owner=owner,
        name=data["name"],
        model=data["model"],
        axes=[
            {
                "field": field,
                "values": [_stored(value) for value in values[field]],
                "labels": [v.name if isinstance(v, Lora) else axis_label(field, v) for v in values[field]],
            }
            for field in fields
        ],
        base_loras=[_stored_lora(lora, multiplier) for lora, multiplier in base],
        prompts=[] if PROMPT in fields else prompts,
        prompt_set=prompt_set,
        options={**options, "trigger_word": trigger_word},
        request=request,
    )
    order = sorted(range(len(axes)), key=lambda i: fields[i] != LORA)  # the lora axis outermost
    for picked in itertools.product(*(range(len(values[fields[i]])) for i in order)):
        index = [picked[order.index(i)] for i in range(len(axes))]  # value index of each axis
        cell = {field: values[field][i] for field, i in zip(fields, index)}
        multiplier = cell.get(MULTIPLIER)
        if LORA in cell:
            stack = [(cell[LORA], multiplier), *base]
        else:
            stack = list(base)
            if multiplier is not None:
                stack[0] = (stack[0][0], multiplier)
        cell_prompts = [cell[PROMPT]] if PROMPT in cell else prompts
        if SEED in cell:
            cell_prompts = [{**item, "seed": cell[SEED]} for item in cell_prompts]
        place = {
            "row": index[0],
            "column": index[1] if len(index) > 1 else 0,
            "layer": index[2] if len(index) > 2 else 0,
        }
        spec = job_spec(
            owner=owner,
            loras=stack,
            options=options,
            prompts=cell_prompts,
            model=data["model"],
            trigger_word=trigger_word,
            request={"sweep": str(sweep.pk), **place},
        )
        job = job_submit(owner=owner, spec=replace(spec, prompt_set=prompt_set))
        axes_of_cell = {field: _stored(value) for field, value in cell.items()}
        GenerationJob.objects.filter(pk=job.pk).update(sweep=sweep, sweep_cell={**place, "axes": axes_of_cell})
    log.info("sweep %s: %d cells queued", sweep.pk, cells)
    return sweep


def _prompt_set(pk: int | None) -> PromptSet | None:
    if pk is None:
        return None
    prompt_set = PromptSet.objects.prefetch_related("items").filter(pk=pk).first()
    if prompt_set is None:
        raise NotFound("PROMPT_SET_NOT_FOUND", f"No prompt set with id {pk}.")
    return prompt_set


def _axis_values(axis: dict, *, seeded, lora_of) -> list:
    field = axis["field"]
    if field == LORA:
        return [lora_of(ref) for ref in axis["values"]]
    if field == PROMPT:
        return [seeded(item) for item in axis["values"]]
    return list(axis["values"])


def _stored(value):
    """An axis value as the sweep and its cells keep it: a LoRA by id (by URL until it is fetched)."""
    return value.pk if isinstance(value, Lora) else value


def _stored_lora(lora: Lora | str, multiplier: float | None) -> dict:
    if isinstance(lora, Lora):
        multiplier = lora.default_multiplier if multiplier is None else multiplier
        return {"lora": lora.pk, "name": lora.name, "multiplier": multiplier, "url": ""}
    return {"lora": None, "name": lora, "multiplier": 1.0 if multiplier is None else multiplier, "url": lora}


# --- cancel and delete ------------------------------------------------------------------------------------------


def sweep_cancel(*, sweep: Sweep, actor) -> Sweep:
    """Cancel every unfinished cell (the grids of what finished are still made). Canceling a canceled
    sweep again is a no-op; one whose cells have all finished is a conflict."""
    require_manage(actor, sweep, what="sweep")
    with transaction.atomic():
        row = Sweep.objects.select_for_update().get(pk=sweep.pk)
        unfinished = list(row.jobs.exclude(status__in=FINISHED))
        if not unfinished:
            if row.canceled:
                return row
            raise Conflict(
                "SWEEP_NOT_CANCELABLE", "Every cell of this sweep has finished.", details={"status": row.status}
            )
        for job in unfinished:
            with contextlib.suppress(IllegalTransition):  # finished meanwhile
                job_cancel(job=job, actor=actor)
        row.canceled, row.status = True, SweepStatus.CANCELED
        row.save(update_fields=["canceled", "status", "updated_at"])
    log.info("sweep %s: canceled %d cells", row.pk, len(unfinished))
    return row


def sweep_delete(*, sweep: Sweep, actor) -> None:
    """Delete a sweep whose cells have all finished and whose grids are not being made, with the cells'
    outputs and the grids' files. The sweep stays locked meanwhile, so no composer stores grids into it."""
    require_manage(actor, sweep, what="sweep")
    with transaction.atomic():
        row = Sweep.objects.select_for_update().filter(pk=sweep.pk).first()
        if row is None:
            raise NotFound("SWEEP_NOT_FOUND", f"No sweep with id {sweep.pk}.", details={"id": str(sweep.pk)})
        if row.status == SweepStatus.COMPOSING or row.jobs.exclude(status__in=FINISHED).exists():
            raise Conflict("SWEEP_ACTIVE", "Cancel the sweep before deleting it.", details={"status": row.status})
        for job in row.jobs.all():
            job_delete(job=job, actor=actor)
        files = [name for grid in SweepGrid.objects.filter(sweep=row) for name in (grid.video.name, grid.image.name)]
        row.delete()
    _delete_files(files)


def _delete_files(names: list[str]) -> None:
    for name in names:
        if name:
            default_storage.delete(name)


# --- settle -----------------------------------------------------------------------------------------------------


def sweep_settle(*, sweep_id) -> str:
    """On the CPU queue, safe to run twice: the sweep's status from its cells; once every cell has
    finished and the stored grids show other cells than these, claim it (composing) and make its grids.
    Returns what it did: the status set, "current", "skipped" (another settle composes), a final status
    or GRID_FAILED."""
    sweep = Sweep.objects.filter(pk=sweep_id).first()
    if sweep is None:
        return "gone"
    cells = _cells(sweep.pk)
    now = timezone.now()
    if any(status not in FINISHED for _, status, _ in cells):
        status = SweepStatus.QUEUED if all(s == JobStatus.QUEUED for _, s, _ in cells) else SweepStatus.RUNNING
        Sweep.objects.filter(pk=sweep.pk).exclude(status=status).update(
            status=status, finished_at=None, error_code="", error_message="", updated_at=now
        )
        return status
    fingerprint = _fingerprint(cells)
    if fingerprint == sweep.grids_fingerprint:
        if sweep.status == SweepStatus.FAILED:
            return SweepStatus.FAILED  # these very cells could not be composed; a change of a cell tries again
        # Only a status a lost race left behind to put right.
        Sweep.objects.filter(pk=sweep.pk, status__in=ACTIVE).update(
            status=SweepStatus.CANCELED if sweep.canceled else SweepStatus.SUCCEEDED, finished_at=now, updated_at=now
        )
        return "current"
    stale_before = now - timedelta(seconds=settings.SWEEP_COMPOSE_STALE_S)
    claimed = (
        Sweep.objects.filter(~Q(status=SweepStatus.COMPOSING) | Q(updated_at__lt=stale_before), pk=sweep.pk)
        .exclude(grids_fingerprint=fingerprint)
        .update(status=SweepStatus.COMPOSING, error_code="", error_message="", updated_at=now)
    )
    if not claimed:
        return "skipped"
    return _compose(sweep, fingerprint=fingerprint)


def _cells(sweep_id) -> list[tuple]:
    """The sweep's cells as a settle weighs them: (pk, status, finished_at), by pk."""
    return list(
        GenerationJob.objects.filter(sweep_id=sweep_id).order_by("pk").values_list("pk", "status", "finished_at")
    )


def _fingerprint(cells: list[tuple]) -> str:
    """Names the finished cells a composition is made from: any retry, re-render or deletion changes it."""
    return hashlib.sha256(
        ";".join(
            f"{pk}:{status}:{finished_at.isoformat() if finished_at else ''}" for pk, status, finished_at in cells
        ).encode()
    ).hexdigest()


def _claim_held(sweep_id, *, fingerprint: str) -> Sweep | None:
    """Inside a transaction: the sweep, locked, while this composer's claim still stands and its cells are
    still the ones it composed; else None. A claim on cells that changed since is given up (the sweep back
    to running) and a settle sent, which composes the cells as they are now."""
    row = Sweep.objects.select_for_update().filter(pk=sweep_id, status=SweepStatus.COMPOSING).first()
    if row is None:  # deleted, or a cell was retried meanwhile and its settle took the claim back
        return None
    if _fingerprint(_cells(sweep_id)) == fingerprint:
        return row
    Sweep.objects.filter(pk=sweep_id).update(status=SweepStatus.RUNNING, updated_at=timezone.now())
    sweep_settle_enqueue(sweep_id=sweep_id)
    return None


def _compose(sweep: Sweep, *, fingerprint: str) -> str:
    """Compose and store every grid of a claimed sweep, files first and rows after, so no grid is ever
    seen half-written; the files of the grids they replace are deleted last. Without a single rendered
    cell there is no grid: a canceled sweep is still canceled, any other failed."""
    # The grid encoder needs the worker's packages (numpy, Pillow, ffmpeg), which the web image lacks.
    from workers.grids import Tile, compose_grid
    from workers.outputs import save_with_retry

    saved, grids = [], []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for plan in grid_plans(sweep, folder=Path(tmp)):
                stem = f"sweeps/{sweep.pk}/grid_{plan.prompt_index:03d}_{plan.layer:02d}_{fingerprint[:12]}"
                video_path, image_path = Path(tmp) / "grid.mp4", Path(tmp) / "grid.png"
                layout = compose_grid(
                    [[Tile(**tile) for tile in row] for row in plan.tiles],
                    row_labels=plan.row_labels,
                    column_labels=plan.column_labels,
                    title=plan.title,
                    video_path=video_path,
                    image_path=image_path,
                    row_title=plan.row_title,
                    column_title=plan.column_title,
                )
                with video_path.open("rb") as video, image_path.open("rb") as image:
                    saved.append(save_with_retry(f"{stem}.mp4", File(video)))
                    saved.append(save_with_retry(f"{stem}.png", File(image)))
                grids.append(
                    SweepGrid(
                        sweep_id=sweep.pk,
                        prompt_index=plan.prompt_index,
                        layer=plan.layer,
                        video=saved[-2],
                        image=saved[-1],
                        width=layout.width,
                        height=layout.height,
                        num_frames=layout.num_frames,
                        fps=layout.fps,
                    )
                )
    except Exception as exc:  # whatever it was, the sweep must not stay composing
        log.exception("sweep %s: composing its grids failed", sweep.pk)
        _delete_files(saved)
        with transaction.atomic():
            if _claim_held(sweep.pk, fingerprint=fingerprint) is None:
                return "superseded"  # the cells changed: whether they compose is for the next settle to find
            Sweep.objects.filter(pk=sweep.pk).update(
                status=SweepStatus.FAILED,
                error_code="GRID_FAILED",
                error_message=f"The grids could not be made: {exc}"[:2000],
                grids_fingerprint=fingerprint,  # these cells are not tried again; any change of one is
                finished_at=timezone.now(),
                updated_at=timezone.now(),
            )
        return "GRID_FAILED"
    with transaction.atomic():
        row = _claim_held(sweep.pk, fingerprint=fingerprint)
        if row is None:  # these grids show cells that changed since, or a sweep deleted meanwhile
            _delete_files(saved)
            return "superseded"
        replaced = [name for grid in row.grids.all() for name in (grid.video.name, grid.image.name)]
        row.grids.all().delete()
        SweepGrid.objects.bulk_create(grids)
        if row.canceled:
            row.status = SweepStatus.CANCELED
        elif grids:
            row.status = SweepStatus.SUCCEEDED
        else:
            row.status, row.error_code = SweepStatus.FAILED, "GRID_FAILED"
            row.error_message = "No cell rendered a video: there is nothing to compose."
        row.grids_fingerprint, row.finished_at = fingerprint, timezone.now()
        row.save(
            update_fields=["status", "error_code", "error_message", "grids_fingerprint", "finished_at", "updated_at"]
        )
    _delete_files(replaced)
    log.info("sweep %s: %d grids stored, %s", sweep.pk, len(grids), row.status)
    return row.status


@dataclass(frozen=True)
class GridPlan:
    """What one grid shows: tiles as compose_grid's Tile takes them (the cells' files downloaded to a local
    folder), and its labels."""

    prompt_index: int
    layer: int
    tiles: list[list[dict]]
    row_labels: list[str]
    column_labels: list[str]
    row_title: str
    column_title: str
    title: str


def grid_plans(sweep: Sweep, *, folder: Path):
    """One plan per value of a third axis and prompt, tiles in rows and columns of the first two axes:
    a succeeded cell's video and poster of that prompt, any other cell blank with its status as note.
    A grid none of whose cells rendered is left out."""
    axes = sweep.axes
    labels = [_grid_labels(axis) for axis in axes]
    rows, columns = labels[0], labels[1] if len(axes) > 1 else [""]
    layers = labels[2] if len(axes) > 2 else [""]
    cells = {
        (job.sweep_cell["row"], job.sweep_cell["column"], job.sweep_cell["layer"]): job
        for job in sweep.jobs.prefetch_related("outputs")
    }
    with_prompt_axis = any(axis["field"] == PROMPT for axis in axes)
    downloaded: dict[str, Path] = {}

    def local(name: str) -> Path:
        if name not in downloaded:
            downloaded[name] = folder / f"{len(downloaded)}{Path(name).suffix}"
            with default_storage.open(name, "rb") as source, downloaded[name].open("wb") as target:
                shutil.copyfileobj(source, target)
        return downloaded[name]

    def tile(job: GenerationJob | None, prompt_index: int):
        if job is None:
            return {"video": None, "note": "deleted"}
        output = next((o for o in job.outputs.all() if o.index == prompt_index), None)
        if job.status != JobStatus.SUCCEEDED or output is None:
            code = job.error_code if job.error_code and job.error_code.lower() != job.status else ""
            return {"video": None, "note": f"{job.status}: {code}" if code else job.status}
        return {"video": local(output.video.name), "poster": local(output.poster.name) if output.poster else None}

    for layer, layer_label in enumerate(layers):
        for prompt_index in range(1 if with_prompt_axis else len(sweep.prompts)):
            tiles = [
                [tile(cells.get((r, c, layer)), prompt_index) for c in range(len(columns))] for r in range(len(rows))
            ]
            if not any(item["video"] for row in tiles for item in row):
                continue  # nothing of it rendered (all canceled, say): no grid to show
            prompt = [] if with_prompt_axis else [shorten(sweep.prompts[prompt_index]["prompt"], TITLE_PROMPT_CHARS)]
            yield GridPlan(
                prompt_index=prompt_index,
                layer=layer,
                tiles=tiles,
                row_labels=rows,
                column_labels=columns,
                row_title=axes[0]["field"],
                column_title=axes[1]["field"] if len(axes) > 1 else "",
                title=" · ".join([sweep.name, *([layer_label] if layer_label else []), *prompt]),
            )


def _grid_labels(axis: dict) -> list[str]:
    """Labels as a grid shows them, to whoever may see the grid: "x0.5", "seed 42", and a private LoRA
    unnamed (as in the MP4s' own records)."""
    field, labels = axis["field"], axis["labels"]
    if field == MULTIPLIER:
        return [f"x{label}" for label in labels]
    if field == SEED:
        return [f"seed {label}" for label in labels]
    if field == LORA:
        private = set(
            Lora.objects.filter(
                pk__in=[v for v in axis["values"] if isinstance(v, int)], visibility=Visibility.PRIVATE
            ).values_list("pk", flat=True)
        )
        return [
            f"{PRIVATE_LORA} {i + 1}" if value in private else label
            for i, (value, label) in enumerate(zip(axis["values"], labels))
        ]
    return list(labels)


# --- reconcile ----------------------------------------------------------------------------------------------------


def sweeps_reconcile() -> int:
    """Have every sweep settled whose status its cells contradict, as when a settle message was lost or
    its composer died: active with every cell finished, final with a cell unfinished or finished after
    it (or without its grids yet), composing for longer than SWEEP_COMPOSE_STALE_S. How many were sent."""
    cells = GenerationJob.objects.filter(sweep=OuterRef("pk"))
    stale_before = timezone.now() - timedelta(seconds=settings.SWEEP_COMPOSE_STALE_S)
    wrong = (
        Sweep.objects.annotate(
            has_cells=Exists(cells),
            unfinished=Exists(cells.exclude(status__in=FINISHED)),
            finished_after=Exists(cells.filter(finished_at__gt=OuterRef("finished_at"))),
        )
        .filter(
            Q(status__in=ACTIVE, has_cells=True, unfinished=False)
            | Q(status__in=FINAL, unfinished=True)
            | Q(status__in=FINAL, finished_after=True)
            | Q(status__in=FINAL, finished_at__isnull=True)
            | Q(status=SweepStatus.COMPOSING, updated_at__lt=stale_before)
        )
        .values_list("pk", flat=True)
    )
    sent = 0
    for pk in wrong:
        sweep_settle_enqueue(sweep_id=pk)
        sent += 1
    return sent
