"""Admin: sweeps to look at (axes, options, each cell's job and the grids) and to cancel; they are made and
deleted through the pages and the API, which keep cells and files together."""

from django.contrib import admin, messages
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from webapp.core.display import kv_table, raw_json
from webapp.core.errors import ApiError
from webapp.jobs.models import GenerationJob

from .models import Sweep, SweepGrid
from .selectors import sweep_counts
from .services import sweep_cancel


class ReadOnlyInline:
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class SweepCellInline(ReadOnlyInline, admin.TabularInline):
    model = GenerationJob
    fields = ["job_link", "place", "values", "status", "progress_percent", "error_code"]
    readonly_fields = fields
    verbose_name, verbose_name_plural = "cell", "cells"

    @admin.display(description="job")
    def job_link(self, job):
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:jobs_generationjob_change", args=[job.pk]), str(job.pk)[:8]
        )

    @admin.display(description="row, column, layer")
    def place(self, job):
        cell = job.sweep_cell or {}
        return f"{cell.get('row', '-')}, {cell.get('column', '-')}, {cell.get('layer', '-')}"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("sweep").order_by("created_at")  # the queue's order

    @admin.display(description="axis values")
    def values(self, job):
        cell = job.sweep_cell or {}
        place = (cell.get("row"), cell.get("column"), cell.get("layer"))
        return ", ".join(f"{axis['field']} {axis['labels'][i]}" for axis, i in zip(job.sweep.axes, place)) or "-"

    @admin.display(description="progress")
    def progress_percent(self, job):
        return f"{job.percent}%"


class SweepGridInline(ReadOnlyInline, admin.TabularInline):
    model = SweepGrid
    fields = ["prompt_index", "layer", "size", "files"]
    readonly_fields = fields
    verbose_name, verbose_name_plural = "grid", "grids"

    @admin.display(description="size")
    def size(self, grid):
        return f"{grid.width}x{grid.height}, {grid.num_frames} frames @ {grid.fps} fps"

    @admin.display(description="files")
    def files(self, grid):
        links = [
            ("MP4", reverse("sweep-grid-file", kwargs={"pk": grid.sweep_id, "grid_id": grid.pk, "kind": "video"})),
            ("PNG", reverse("sweep-grid-file", kwargs={"pk": grid.sweep_id, "grid_id": grid.pk, "kind": "image"})),
        ]
        return format_html_join(" · ", '<a href="{1}">{0}</a>', links)


@admin.register(Sweep)
class SweepAdmin(admin.ModelAdmin):
    list_display = ["name", "short_id", "owner", "status", "cells", "created"]
    list_filter = ["status", "owner", "canceled"]
    list_per_page = 50
    search_fields = ["id", "name"]
    actions = ["cancel_sweeps"]
    fields = [
        "id",
        ("name", "owner", "model"),
        ("status", "canceled"),
        ("error_code", "error_message"),
        ("created_at", "finished_at"),
        "axes_table",
        "base_loras_table",
        "prompts_table",
        "prompt_set",
        "options_table",
        "request_json",
        "grids_fingerprint",
    ]
    readonly_fields = [name for line in fields for name in (line if isinstance(line, tuple) else (line,))]
    inlines = [SweepGridInline, SweepCellInline]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("owner").prefetch_related("jobs")

    @admin.display(description="id", ordering="id")
    def short_id(self, sweep):
        return format_html('<span title="{}">{}</span>', sweep.id, str(sweep.id)[:8])

    @admin.display(description="cells")
    def cells(self, sweep):
        counts = sweep_counts(sweep=sweep)
        return ", ".join(f"{count} {status}" for status, count in counts.items() if count) or "-"

    @admin.display(description="created", ordering="created_at")
    def created(self, sweep):
        return timezone.localtime(sweep.created_at).strftime("%Y-%m-%d %H:%M")

    @admin.display(description="axes")
    def axes_table(self, sweep):
        return format_html_join(
            "",
            "<p><b>{}</b>: {}</p>",
            ((axis["field"], ", ".join(axis.get("labels") or map(str, axis["values"]))) for axis in sweep.axes),
        )

    @admin.display(description="base LoRAs")
    def base_loras_table(self, sweep):
        return (
            format_html_join(
                format_html("<br>"), "{} @ {}", ((x["name"], f"{x['multiplier']:g}") for x in sweep.base_loras)
            )
            or "-"
        )

    @admin.display(description="prompts")
    def prompts_table(self, sweep):
        return format_html_join("", "<p>{} (seed {})</p>", ((p["prompt"], p.get("seed")) for p in sweep.prompts)) or "-"

    @admin.display(description="options")
    def options_table(self, sweep):
        return kv_table(sweep.options)

    @admin.display(description="request")
    def request_json(self, sweep):
        return raw_json(sweep.request, "as submitted") if sweep.request else "-"

    @admin.action(description="Cancel selected sweeps")
    def cancel_sweeps(self, request, queryset):
        count = 0
        for sweep in queryset:
            try:
                sweep_cancel(sweep=sweep, actor=request.user)
                count += 1
            except ApiError as exc:
                messages.warning(request, f"{sweep.name}: {exc.message}")
        messages.info(request, f"{count} sweep(s) canceled.")
