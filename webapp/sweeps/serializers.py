"""The request and the answer of /api/v1/sweeps/.

A sweep takes the job options of POST /api/v1/jobs/ through the jobs API's own serializer; the answer
is what `sweep_shown` makes of a sweep for its viewer (the same board the sweep page shows).
"""

import math

from django.conf import settings
from django.urls import reverse
from rest_framework import serializers

from webapp.core.catalog import DEFAULT_MODEL, MAX_LORAS, MULTIPLIER_HIGH, MULTIPLIER_LOW
from webapp.core.errors import ApiError
from webapp.core.permissions import can_manage
from webapp.jobs.models import JobStatus
from webapp.jobs.serializers import JobLoraInputSerializer, JobOptionsSerializer
from webapp.prompts.serializers import PromptFieldsSerializer

from .models import AXIS_FIELDS, Sweep, SweepStatus
from .selectors import sweep_axes_shown, sweep_base_loras_shown, sweep_board, sweep_counts, sweep_grids, sweep_loras
from .services import LORA, MULTIPLIER, PROMPT, SEED, too_many_cells

MAX_AXES = 3
SEED_MAX = 2**63 - 1
LORAS_CONTEXT = "sweep_loras"  # a page of sweeps: the LoRAs they name, looked up once


class PromptOrTextSerializer(PromptFieldsSerializer):
    """A prompt item as the jobs API takes it; its text alone stands for {"prompt": text}."""

    def to_internal_value(self, data):
        return super().to_internal_value({"prompt": data} if isinstance(data, str) else data)


class SweepAxisInputSerializer(serializers.Serializer):
    field = serializers.ChoiceField(choices=AXIS_FIELDS)
    values = serializers.ListField(
        child=serializers.JSONField(),
        help_text="lora: LoRA references (id, name, sha256, path, URL); multiplier: numbers; seed: integers; "
        "prompt: prompt items (empty with prompt_set: the set's prompts).",
    )


def _axis_error(message: str, index: int | None = None) -> ApiError:
    where = "axes" if index is None else f"axes[{index}]"
    return ApiError("SWEEP_BAD_AXES", message, details={where: [{"code": "invalid", "message": message}]})


def _check_value(field: str, value, *, index: int):
    """One value of an axis, normalised (a LoRA reference as text, a multiplier as a float, a prompt item
    validated); SWEEP_BAD_AXES when it is not of the axis' type."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if field == LORA and isinstance(value, str) and 0 < len(value) <= 1000:
        return value
    if field == LORA and isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return str(value)
    if field == MULTIPLIER and number and math.isfinite(value) and MULTIPLIER_LOW <= value <= MULTIPLIER_HIGH:
        return float(value)
    if field == SEED and isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX:
        return value
    if field == PROMPT:
        item = PromptOrTextSerializer(data=value)
        if item.is_valid():
            return dict(item.validated_data)
    expected = {
        LORA: "a LoRA reference",
        MULTIPLIER: f"a number from {MULTIPLIER_LOW:g} to {MULTIPLIER_HIGH:g}",
        SEED: f"an integer from 0 to {SEED_MAX}",
        PROMPT: "a prompt (text, or an item with a non-empty prompt as the jobs API takes it)",
    }[field]
    raise _axis_error(f"Each value of the {field} axis must be {expected}; got {str(value)[:50]!r}.", index)


def _first_message(detail) -> str:
    if isinstance(detail, dict):
        key, value = next(iter(detail.items()))
        named = isinstance(key, str) and key != "non_field_errors"
        return f"{key}: {_first_message(value)}" if named else _first_message(value)
    if isinstance(detail, list):
        return _first_message(next(item for item in detail if item))
    return str(detail)


class SweepCreateSerializer(JobOptionsSerializer):
    """POST /api/v1/sweeps/: the cells' prompts and LoRAs, 1 to 3 axes, and the job options every cell shares."""

    name = serializers.CharField(max_length=200)
    model = serializers.CharField(default=DEFAULT_MODEL)
    prompts = PromptOrTextSerializer(
        many=True,
        required=False,
        allow_empty=False,
        max_length=settings.JOB_MAX_PROMPTS,
        help_text="Prompt items as the jobs API takes them, or plain text; every cell renders all of them.",
    )
    prompt_set = serializers.IntegerField(required=False, allow_null=True)
    trigger_word = serializers.CharField(max_length=200, required=False, allow_blank=True, allow_null=True)
    base_loras = JobLoraInputSerializer(
        many=True, required=False, default=list, max_length=MAX_LORAS, help_text="A stack every cell has."
    )
    axes = SweepAxisInputSerializer(
        many=True, help_text="1 to 3: rows, columns, then one grid per value; cells are their product."
    )

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if isinstance(exc.detail, dict) and "axes" in exc.detail:
                raise _axis_error(f"axes: {_first_message(exc.detail['axes'])}") from None
            raise

    def validate_axes(self, axes):
        if not 1 <= len(axes) <= MAX_AXES:
            raise _axis_error(f"A sweep has 1 to {MAX_AXES} axes; this one has {len(axes)}.")
        fields = [axis["field"] for axis in axes]
        if len(set(fields)) != len(fields):
            raise _axis_error("Each field may be an axis once.")
        cells = math.prod(len(axis["values"]) for axis in axes if axis["values"])
        if cells > settings.SWEEP_MAX_CELLS:
            raise too_many_cells(cells)
        checked = []
        for index, axis in enumerate(axes):
            if not axis["values"] and axis["field"] != PROMPT:  # a prompt axis may take a prompt set's prompts
                raise _axis_error(f"The {axis['field']} axis has no values.", index)
            values = [_check_value(axis["field"], value, index=index) for value in axis["values"]]
            checked.append({"field": axis["field"], "values": values})
        return checked

    def validate(self, data):
        if data.get("prompts") and data.get("prompt_set"):
            raise serializers.ValidationError("Give either prompt_set or prompts.", code="prompts_or_prompt_set")
        if any(axis["field"] == LORA for axis in data["axes"]) and len(data["base_loras"]) >= MAX_LORAS:
            raise serializers.ValidationError(
                {"base_loras": f"With a lora axis at most {MAX_LORAS - 1} base LoRAs fit a stack of {MAX_LORAS}."}
            )
        return super().validate(data)


# --- the answer -------------------------------------------------------------------------------------------------


class SweepAxisSerializer(serializers.Serializer):
    field = serializers.ChoiceField(choices=AXIS_FIELDS)
    values = serializers.ListField(
        child=serializers.JSONField(),
        help_text="As the cells render them: LoRA ids (a URL until fetched; null for a LoRA the viewer may not "
        "see), multipliers, seeds, prompt items.",
    )
    labels = serializers.ListField(child=serializers.CharField(), help_text="One short label per value.")


class SweepLoraSerializer(serializers.Serializer):
    """A LoRA of the stack every cell has, as the viewer may see it (as a job's LoRAs are shown)."""

    lora = serializers.IntegerField(allow_null=True)
    name = serializers.CharField()
    multiplier = serializers.FloatField()
    url = serializers.CharField(allow_blank=True)


class SweepOptionsSerializer(JobOptionsSerializer):
    """The job options every cell has; `webhook` shown to the sweep's owner and staff only."""

    trigger_word = serializers.CharField(allow_null=True, required=False)


class SweepCountsSerializer(serializers.Serializer):
    """How many cells are in each job state."""

    queued = serializers.IntegerField()
    running = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    canceled = serializers.IntegerField()


class SweepCellOutputSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="The prompt's index.")
    video_url = serializers.URLField()
    poster_url = serializers.URLField(allow_null=True)


class SweepCellSerializer(serializers.Serializer):
    """One cell: where it sits, its axis values and the job that renders it."""

    row = serializers.IntegerField()
    column = serializers.IntegerField()
    layer = serializers.IntegerField()
    axes = serializers.DictField(child=serializers.JSONField(), help_text="{field: value} of this cell.")
    labels = serializers.DictField(child=serializers.CharField(), help_text="{field: label} of this cell.")
    job = serializers.UUIDField()
    status = serializers.ChoiceField(choices=JobStatus.choices)
    progress = serializers.FloatField(help_text="0 to 1.")
    error_code = serializers.CharField(allow_blank=True)
    outputs = SweepCellOutputSerializer(many=True)


class SweepGridSerializer(serializers.Serializer):
    """One composed grid: every cell's video of one prompt (and one value of a third axis), playing in sync."""

    id = serializers.IntegerField()
    prompt_index = serializers.IntegerField()
    layer = serializers.IntegerField()
    video_url = serializers.URLField(help_text="The grid as MP4.")
    image_url = serializers.URLField(help_text="The cells' first frames as one PNG.")
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    num_frames = serializers.IntegerField()
    fps = serializers.IntegerField()


class SweepErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class SweepListSerializer(serializers.ListSerializer):
    """A page of sweeps, the LoRAs they name looked up once for the whole page."""

    def to_representation(self, data):
        sweeps = list(data)
        self.context[LORAS_CONTEXT] = sweep_loras(sweeps=sweeps)
        return super().to_representation(sweeps)


class SweepSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    owner = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=SweepStatus.choices)
    model = serializers.CharField()
    axes = SweepAxisSerializer(many=True)
    base_loras = SweepLoraSerializer(many=True)
    prompts = PromptFieldsSerializer(
        many=True, help_text="What every cell renders, seeds fixed (empty with a prompt axis: its values)."
    )
    prompt_set = serializers.IntegerField(allow_null=True)
    options = SweepOptionsSerializer()
    counts = SweepCountsSerializer()
    cells = SweepCellSerializer(many=True)
    grids = SweepGridSerializer(many=True, help_text="Once every cell has finished.")
    error = SweepErrorSerializer(allow_null=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    url = serializers.URLField(help_text="The sweep's page.")

    class Meta:
        list_serializer_class = SweepListSerializer

    def to_representation(self, sweep):
        shown = sweep_shown(sweep, request=self.context.get("request"), loras=self.context.get(LORAS_CONTEXT))
        return super().to_representation(shown)


def sweep_shown(sweep: Sweep, *, request, loras: dict | None = None) -> dict:
    """The answer's fields of a sweep, as the viewer (the request's user) may see them, with absolute URLs.
    `loras`: sweep_loras' answer for a page of sweeps, looked up once for all of them."""
    user = request.user if request is not None else None
    build = request.build_absolute_uri if request is not None else (lambda url: url)
    loras = sweep_loras(sweeps=[sweep]) if loras is None else loras
    axes = sweep_axes_shown(sweep=sweep, user=user, loras=loras)
    cells = [
        {
            "row": cell.row,
            "column": cell.column,
            "layer": layer,
            "axes": cell.axes,
            "labels": cell.labels,
            "job": cell.job.pk,
            "status": cell.status,
            "progress": cell.progress,
            "error_code": cell.job.error_code,
            "outputs": [
                {
                    "index": urls["index"],
                    "video_url": build(urls["video_url"]),
                    "poster_url": build(urls["poster_url"]) if urls["poster_url"] else None,
                }
                for urls in cell.output_urls
            ],
        }
        for layer, board in enumerate(sweep_board(sweep=sweep, axes=axes))
        for row in board.cells
        for cell in row
        if cell is not None
    ]
    options = dict(sweep.options)
    if user is not None and not can_manage(user, sweep):  # as a job's webhook: its owner's and staff's only
        options["webhook"] = None
    return {
        "id": sweep.pk,
        "name": sweep.name,
        "owner": str(sweep.owner) if sweep.owner else None,
        "status": sweep.status,
        "model": sweep.model,
        "axes": axes,
        "base_loras": sweep_base_loras_shown(sweep=sweep, user=user, loras=loras),
        "prompts": sweep.prompts,
        "prompt_set": sweep.prompt_set_id,
        "options": options,
        "counts": sweep_counts(sweep=sweep),
        "cells": cells,
        "grids": [
            {
                "id": shown.grid.pk,
                "prompt_index": shown.grid.prompt_index,
                "layer": shown.grid.layer,
                "video_url": build(shown.video_url),
                "image_url": build(shown.image_url),
                "width": shown.grid.width,
                "height": shown.grid.height,
                "num_frames": shown.grid.num_frames,
                "fps": shown.grid.fps,
            }
            for shown in sweep_grids(sweep=sweep, axes=axes)
        ],
        "error": {"code": sweep.error_code, "message": sweep.error_message} if sweep.error_code else None,
        "created_at": sweep.created_at,
        "finished_at": sweep.finished_at,
        "url": build(reverse("sweep-detail", kwargs={"pk": sweep.pk})),
    }
