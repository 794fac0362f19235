"""The sweep pages: the list, the new-sweep form (pre-filled from a training run or the submit page),
one sweep's boards of cells that play in sync, the status fragment its page polls, and Cancel."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from webapp.core.errors import ApiError, NotFound
from webapp.core.permissions import can_manage
from webapp.jobs.models import FINISHED, Preset
from workers.pipeline.params import DEFAULTS

from .forms import SweepForm
from .models import Sweep, SweepStatus
from .selectors import (
    Cell,
    sweep_axes_shown,
    sweep_board,
    sweep_counts,
    sweep_get,
    sweep_grids,
    sweep_loras,
    sweep_summaries,
)
from .services import sweep_cancel, sweep_create

LIST_PAGE_SIZE = 25
UNFINISHED = (SweepStatus.QUEUED, SweepStatus.RUNNING, SweepStatus.COMPOSING)


@login_required
def sweep_list_page(request):
    page = Paginator(sweep_summaries(user=request.user), LIST_PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [
        {
            "sweep": sweep,
            "total": sum(counts.values()),
            "counts": [(status, count) for status, count in counts.items() if count],
            "axes": axes_text(sweep),
        }
        for sweep in page
        for counts in [sweep_counts(sweep=sweep)]
    ]
    return render(request, "sweeps/list.html", {"nav": "sweeps", "page": page, "rows": rows})


def axes_text(sweep: Sweep) -> str:
    """The axes and how many values each has: "lora (4) × multiplier (2)"."""
    return " × ".join(f"{axis['field']} ({len(axis['values'])})" for axis in sweep.axes)


@login_required
def sweep_new_page(request):
    if request.method != "POST" or request.POST.get("compare"):  # "Compare as a sweep" posts the submit form
        form = SweepForm.prefilled(request.POST if request.method == "POST" else request.GET, user=request.user)
        return render(request, "sweeps/new.html", {"nav": "sweeps", "form": form})
    form = SweepForm(request.POST, user=request.user)
    if form.is_valid():
        try:
            sweep = sweep_create(owner=request.user, data=form.validated_data, request=form.body)
        except ApiError as exc:
            form.add_api_error(exc)
        else:
            messages.success(request, f"Sweep “{sweep.name}” queued: {sweep.jobs.count()} cells.")
            return redirect("sweep-detail", pk=sweep.pk)
    return render(request, "sweeps/new.html", {"nav": "sweeps", "form": form}, status=400)


@dataclass(frozen=True)
class ShownCell:
    """A cell as the page shows it for the chosen prompt: its video once its job has finished with one,
    else its status and progress."""

    cell: Cell
    video_url: str
    poster_url: str
    width: int
    height: int
    percent: int
    finished: bool
    full_settings_url: str
    axes_text: str


@dataclass(frozen=True)
class ShownBoard:
    """One board (a value of a third axis) as a table: column labels, then each row's label and cells."""

    label: str
    row_title: str
    column_title: str
    column_labels: list[str]
    rows: list[tuple[str, list[ShownCell | None]]]


@dataclass(frozen=True)
class SweepView:
    """What the sweep page and its status fragment show: the boards of cells for the chosen prompt."""

    sweep: Sweep
    boards: list[ShownBoard]
    prompt: int  # index of the prompt the cells play
    prompts: list[str]  # every prompt's text, for the selector; empty with a prompt axis
    counts: list[tuple[str, int]]  # the states cells are in, with how many
    total: int
    percent: int  # of every cell's work
    polling: bool  # the page polls while anything can still change
    cancelable: bool
    can_manage: bool
    grids: list
    axes: list[str]
    fps: int
    width: int
    height: int

    @property
    def cells(self) -> list[ShownCell]:
        return [shown for board in self.boards for _, cells in board.rows for shown in cells if shown is not None]


def sweep_view(request, sweep: Sweep) -> SweepView:
    prompts = [item.get("prompt", "") for item in sweep.prompts]
    chosen = request.GET.get("prompt", "")
    prompt = int(chosen) if chosen.isdigit() and int(chosen) < len(prompts) else 0
    axes = sweep_axes_shown(sweep=sweep, user=request.user, loras=sweep_loras(sweeps=[sweep]))
    boards = [
        ShownBoard(
            board.label,
            board.row_title,
            board.column_title,
            board.column_labels,
            [
                (label, [shown_cell(cell, prompt=prompt) if cell else None for cell in cells])
                for label, cells in zip(board.row_labels, board.cells)
            ],
        )
        for board in sweep_board(sweep=sweep, axes=axes)
    ]
    counts = sweep_counts(sweep=sweep)
    cells = [shown.cell for board in boards for _, row in board.rows for shown in row if shown is not None]
    params = cells[0].job.prompts[min(prompt, len(cells[0].job.prompts) - 1)] if cells else {}
    unfinished = any(cell.status not in FINISHED for cell in cells)
    return SweepView(
        sweep=sweep,
        boards=boards,
        prompt=prompt,
        prompts=prompts,
        counts=[(status, count) for status, count in counts.items() if count],
        total=sum(counts.values()),
        percent=int(100 * sum(cell.progress for cell in cells) / len(cells)) if cells else 0,
        polling=sweep.status in UNFINISHED or unfinished,
        cancelable=unfinished,
        can_manage=can_manage(request.user, sweep),
        grids=sweep_grids(sweep=sweep, axes=axes),
        axes=[axis["field"] for axis in sweep.axes],
        fps=params.get("fps") or DEFAULTS["fps"],
        width=params.get("width") or DEFAULTS["width"],
        height=params.get("height") or DEFAULTS["height"],
    )


def shown_cell(cell: Cell, *, prompt: int) -> ShownCell:
    job = cell.job
    index = prompt if len(job.prompts) > 1 else 0  # a prompt axis' cell renders its one prompt
    params = job.prompts[index] if index < len(job.prompts) else {}
    urls = next((urls for urls in cell.output_urls if urls["index"] == index), None)
    finished = job.status in FINISHED
    return ShownCell(
        cell=cell,
        video_url=urls["video_url"] if urls and finished else "",
        poster_url=(urls["poster_url"] or "") if urls else "",
        width=params.get("width") or DEFAULTS["width"],
        height=params.get("height") or DEFAULTS["height"],
        percent=int(100 * cell.progress),
        finished=finished,
        full_settings_url=full_settings_url(job, prompt=index),
        axes_text=", ".join(f"{field} {label}" for field, label in cell.labels.items()),
    )


@login_required
def sweep_page(request, pk):
    view = sweep_view(request, _sweep_or_404(pk, user=request.user))
    return render(request, "sweeps/detail.html", {"nav": "sweeps", "view": view, "sweep": view.sweep})


@login_required
def sweep_status_fragment(request, pk):
    """What the sweep page polls: its status card, and (out of band) each cell the page still shows as
    unfinished (`?pending=<job id>`), so cells already playing are never replaced."""
    view = sweep_view(request, _sweep_or_404(pk, user=request.user))
    pending = set(request.GET.getlist("pending"))
    cells = [shown for shown in view.cells if str(shown.cell.job.pk) in pending]
    return render(request, "sweeps/_status.html", {"view": view, "sweep": view.sweep, "oob_cells": cells})


@login_required
@require_POST
def sweep_cancel_action(request, pk):
    sweep = _sweep_or_404(pk, user=request.user)
    try:
        sweep_cancel(sweep=sweep, actor=request.user)
    except ApiError as exc:
        messages.error(request, f"{exc.code}: {exc.message}")
    else:
        messages.success(request, f"Sweep “{sweep.name}” canceled.")
    return redirect("sweep-detail", pk=pk)


def full_settings_url(job, *, prompt: int) -> str:
    """The submit page pre-filled from a cell's job: its LoRA stack and options, only the prompt shown,
    at the standard preset (a sweep may have been rendered as a draft)."""
    query = {"from": job.pk, "preset": Preset.STANDARD}
    if len(job.prompts) > 1:
        query["prompt"] = prompt
    return f"{reverse('job-new')}?{urlencode(query)}"


def _sweep_or_404(pk, *, user) -> Sweep:
    try:
        return sweep_get(pk=pk, user=user)
    except NotFound:
        raise Http404("No such sweep.") from None
