"""Reads of sweeps: lookups, what a viewer sees of a sweep's axes and LoRAs, and its boards of cells
(one per value of a third axis), which the sweep page and the API both show.

Everyone on the team sees every sweep, as they see every job; a LoRA the viewer may not see is shown
as a job's is (`webapp.jobs.selectors`): unnamed, its id withheld.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db.models import Prefetch, QuerySet
from django.urls import reverse

from webapp.core.errors import NotFound
from webapp.jobs.models import GenerationJob, JobLora, JobStatus
from webapp.jobs.selectors import GONE_LORA, PRIVATE_LORA
from webapp.jobs.serializers import output_urls
from webapp.loras.models import Lora
from webapp.loras.selectors import lora_visible

from .models import Sweep, SweepGrid
from .services import LORA


def sweep_list(*, user) -> QuerySet[Sweep]:
    """Every sweep, newest first, with what its board and grids need (the API's list and detail)."""
    cells = GenerationJob.objects.prefetch_related(
        Prefetch("job_loras", queryset=JobLora.objects.select_related("lora")), "outputs"
    )
    return Sweep.objects.select_related("owner", "prompt_set").prefetch_related(
        Prefetch("jobs", queryset=cells), "grids"
    )


def sweep_summaries(*, user) -> QuerySet[Sweep]:
    """Every sweep, newest first, with only what its line of the list page needs: its cells' states."""
    return Sweep.objects.select_related("owner").prefetch_related(
        Prefetch("jobs", queryset=GenerationJob.objects.only("pk", "sweep_id", "status"))
    )


def sweep_get(*, pk, user) -> Sweep:
    try:
        return sweep_list(user=user).get(pk=pk)
    except (Sweep.DoesNotExist, ValidationError, ValueError):  # malformed ids are just unknown
        raise NotFound("SWEEP_NOT_FOUND", f"No sweep with id {pk}.", details={"id": str(pk)}) from None


def sweep_grid_get(*, sweep_id, grid_id) -> SweepGrid:
    grid = SweepGrid.objects.filter(sweep_id=sweep_id, pk=grid_id).first()
    if grid is None:
        raise NotFound("SWEEP_GRID_NOT_FOUND", f"No grid {grid_id} of sweep {sweep_id}.")
    return grid


def _shows_everything(sweep: Sweep, user) -> bool:
    return user is None or user.is_staff or (sweep.owner_id is not None and sweep.owner_id == user.pk)


def _lora_shown(value, label: str, *, sweep: Sweep, user, loras: dict[int, Lora]) -> tuple:
    """A LoRA of the sweep (an id, or a URL not fetched yet) as `user` may see it: (value, label)."""
    if not isinstance(value, int) or _shows_everything(sweep, user):
        return value, label
    lora = loras.get(value)
    if lora is None:
        return None, GONE_LORA
    return (value, label) if lora_visible(lora=lora, user=user) else (None, PRIVATE_LORA)


def sweep_loras(*, sweeps) -> dict[int, Lora]:
    """Every LoRA the sweeps name by id (on an axis or in the base stack), in one query, by id."""
    ids = set()
    for sweep in sweeps:
        ids.update(item["lora"] for item in sweep.base_loras if isinstance(item["lora"], int))
        for axis in sweep.axes:
            if axis["field"] == LORA:
                ids.update(value for value in axis["values"] if isinstance(value, int))
    return Lora.objects.in_bulk(ids)


def sweep_axes_shown(*, sweep: Sweep, user, loras: dict[int, Lora]) -> list[dict]:
    """The sweep's axes as `user` may see them: [{"field", "values", "labels"}]. `loras`: sweep_loras'."""
    shown = []
    for axis in sweep.axes:
        values, labels = list(axis["values"]), list(axis["labels"])
        if axis["field"] == LORA:
            pairs = [_lora_shown(v, label, sweep=sweep, user=user, loras=loras) for v, label in zip(values, labels)]
            values, labels = [v for v, _ in pairs], [label for _, label in pairs]
        shown.append({"field": axis["field"], "values": values, "labels": labels})
    return shown


def sweep_base_loras_shown(*, sweep: Sweep, user, loras: dict[int, Lora]) -> list[dict]:
    """The stack every cell has, as `user` may see it: [{"lora", "name", "multiplier", "url"}]."""
    shown = []
    for item in sweep.base_loras:
        lora, name = _lora_shown(item["lora"], item["name"], sweep=sweep, user=user, loras=loras)
        shown.append({"lora": lora, "name": name, "multiplier": item["multiplier"], "url": item["url"]})
    return shown


@dataclass(frozen=True)
class Cell:
    """One cell of a board: where it sits, its axis values and labels (as the viewer may see them), its
    job and how far it is, and its outputs' URLs ([{"index", "video_url", "poster_url"}], one per prompt)."""

    row: int
    column: int
    axes: dict
    labels: dict
    job: GenerationJob
    status: str
    progress: float
    output_urls: list[dict]


@dataclass(frozen=True)
class Board:
    """The cells of one value of a third axis (`label`; "" without one) in rows and columns of the first
    two axes (`column_title` "" and one column without a second). A cell whose job was deleted is None."""

    label: str
    row_title: str
    column_title: str
    row_labels: list[str]
    column_labels: list[str]
    cells: list[list[Cell | None]]


def sweep_board(*, sweep: Sweep, axes: list[dict]) -> list[Board]:
    """The sweep's boards, one per value of its third axis (one without); `axes` as sweep_axes_shown
    gives them to the viewer."""
    rows, columns, layers = axes[0], axes[1] if len(axes) > 1 else None, axes[2] if len(axes) > 2 else None
    jobs = {(job.sweep_cell["row"], job.sweep_cell["column"], job.sweep_cell["layer"]): job for job in sweep.jobs.all()}

    def cell(row: int, column: int, layer: int) -> Cell | None:
        job = jobs.get((row, column, layer))
        if job is None:
            return None
        index = [row, column, layer][: len(axes)]
        fraction = job.progress.get("fraction", 1.0 if job.status == JobStatus.SUCCEEDED else 0.0)
        urls = [(output.index, output_urls(output, None)) for output in job.outputs.all()]
        return Cell(
            row=row,
            column=column,
            axes={axis["field"]: axis["values"][i] for axis, i in zip(axes, index)},
            labels={axis["field"]: axis["labels"][i] for axis, i in zip(axes, index)},
            job=job,
            status=job.status,
            progress=fraction,
            output_urls=[
                {"index": index, "video_url": url["url"], "poster_url": url["poster_url"]} for index, url in urls
            ],
        )

    column_labels = columns["labels"] if columns else [""]
    return [
        Board(
            label=label,
            row_title=rows["field"],
            column_title=columns["field"] if columns else "",
            row_labels=rows["labels"],
            column_labels=column_labels,
            cells=[[cell(r, c, layer) for c in range(len(column_labels))] for r in range(len(rows["labels"]))],
        )
        for layer, label in enumerate(layers["labels"] if layers else [""])
    ]


def sweep_counts(*, sweep: Sweep) -> dict[str, int]:
    """How many of the sweep's cells are in each job state."""
    counted = Counter(job.status for job in sweep.jobs.all())
    return {status: counted[status] for status in JobStatus.values}


@dataclass(frozen=True)
class GridShown:
    """A stored grid with its label (its prompt and the third axis' value) and its files' URLs."""

    grid: SweepGrid
    label: str
    video_url: str
    image_url: str


def sweep_grids(*, sweep: Sweep, axes: list[dict]) -> list[GridShown]:
    """The sweep's stored grids, labelled; `axes` as sweep_axes_shown gives them to the viewer."""
    layers = axes[2] if len(axes) > 2 else None
    several_prompts = len(sweep.prompts) > 1

    def url(grid: SweepGrid, kind: str) -> str:
        return reverse("sweep-grid-file", kwargs={"pk": sweep.pk, "grid_id": grid.pk, "kind": kind})

    def label(grid: SweepGrid) -> str:
        parts = [f"prompt {grid.prompt_index + 1}"] if several_prompts else []
        if layers and grid.layer < len(layers["labels"]):
            parts.append(f"{layers['field']} {layers['labels'][grid.layer]}")
        return ", ".join(parts) or "grid"

    return [GridShown(grid, label(grid), url(grid, "video"), url(grid, "image")) for grid in sweep.grids.all()]
