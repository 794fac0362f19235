"""Admin: submit jobs from a prompt set and LoRAs, watch progress, play outputs, cancel and retry."""

from django import forms
from django.contrib import admin, messages
from django.http import HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from webapp.core.catalog import MAX_LORAS, MULTIPLIER_HIGH, MULTIPLIER_LOW, model_check
from webapp.core.display import kv_table, ordered, raw_json
from webapp.core.errors import ApiError
from webapp.loras.models import Lora
from webapp.prompts.models import PromptSet

from .models import GenerationJob, JobLora, JobOutput, Preset
from .serializers import JobOptionsSerializer, output_urls
from .services import JOB_OPTIONS, job_cancel, job_prompts_resolve, job_rerun, job_retry, job_spec, job_submit

LORA_ROWS = range(1, MAX_LORAS + 1)
RECORD_ORDER = [
    "job_id",
    "model",
    "checkpoint",
    "prompt",
    "neg",
    "width",
    "height",
    "num_frames",
    "fps",
    "sample_steps",
    "guidance_scale",
    "seed",
    "lora_scale",
    "scheduler",
    "speed",
    "preset",
    "lora_math",
    "step_cache",
    "loras",
    "software",
    "timings",
]
TIMING_ORDER = [
    "load",
    "lora_switch",
    "fast_merge",
    "text_encode",
    "denoise",
    "denoise_per_step",
    "vae_decode",
    "mp4_encode",
    "save",
]


class LoraChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, lora):
        return f"{lora.name} (default {lora.default_multiplier:g})"


class JobSubmitBase(forms.ModelForm):
    """A prompt set, up to MAX_LORAS (LoRA, multiplier) rows (declared below, as JobSubmitForm) and the job
    options; `clean` builds the JobSpec that save_model hands to job_submit, so every error the spec can have
    shows on the form."""

    current_user = None  # set per request by GenerationJobAdmin.get_form
    prompt_set = forms.ModelChoiceField(PromptSet.objects.all())
    priority = forms.IntegerField(min_value=0, max_value=9, initial=0, help_text="0-9; higher starts first.")
    preset = forms.TypedChoiceField(
        choices=Preset.choices,
        required=False,
        empty_value=None,  # left out: the option's default
        initial=Preset.STANDARD,
        help_text="draft: DRAFT_LORA after the LoRAs below, 4 steps where a prompt gives none, no CFG.",
    )

    class Meta:
        model = GenerationJob
        fields = ["prompt_set", *JOB_OPTIONS]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.spec = None

    def lora_stack(self) -> list[tuple[Lora, float | None]]:
        data, stack, seen = self.cleaned_data, [], set()
        for i in LORA_ROWS:
            lora, multiplier = data.get(f"lora_{i}"), data.get(f"multiplier_{i}")
            if lora is None:
                if multiplier is not None:
                    self.add_error(f"lora_{i}", "Choose the LoRA this multiplier is for.")
                continue
            if lora.pk in seen:
                self.add_error(f"lora_{i}", "This LoRA is already in the stack; give it one multiplier.")
            seen.add(lora.pk)
            stack.append((lora, multiplier))  # None: the LoRA's default multiplier
        return stack

    def clean(self):
        data = super().clean()
        stack = self.lora_stack()
        options = {name: data.get(name) for name in JOB_OPTIONS if name in data}
        checked = JobOptionsSerializer(data={k: v for k, v in options.items() if v is not None})
        try:
            if not checked.is_valid():
                for name, errors in checked.errors.items():
                    self.add_error(name if name in self.fields else None, errors)
        except ApiError as exc:  # OPTIONS_CONFLICT
            self.add_error(None, exc.message)
        prompt_set = data.get("prompt_set")
        if self.errors or prompt_set is None:
            return data
        if not prompt_set.items.exists():
            raise forms.ValidationError("This prompt set has no prompts.")
        try:
            spec = job_spec(owner=self.current_user, loras=stack, options=checked.validated_data, prompt_set=prompt_set)
            model_check(spec.model)
            if any(not item.get("prompt") for item in spec.prompts):
                raise ApiError("NO_PROMPTS", "Every prompt of the set needs its text.")
            job_prompts_resolve(
                spec.prompts, trigger_word=spec.trigger_word, semantics=spec.options["prompt_semantics"]
            )
        except ApiError as exc:
            raise forms.ValidationError(f"{exc.code}: {exc.message}") from None
        self.spec = spec
        return data


def _lora_row_fields() -> dict:
    fields = {}
    for i in LORA_ROWS:
        fields[f"lora_{i}"] = LoraChoiceField(Lora.objects.order_by("name"), required=False, label=f"LoRA {i}")
        fields[f"multiplier_{i}"] = forms.FloatField(
            min_value=MULTIPLIER_LOW,
            max_value=MULTIPLIER_HIGH,
            required=False,
            label="multiplier",
            widget=forms.NumberInput(attrs={"step": "0.05", "placeholder": "default", "style": "width: 6em"}),
        )
    return fields


JobSubmitForm = type("JobSubmitForm", (JobSubmitBase,), _lora_row_fields())


class JobLoraInline(admin.TabularInline):
    model = JobLora
    fields = ["lora_link", "multiplier", "short_sha256"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name, verbose_name_plural = "LoRA", "LoRA stack"

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="LoRA")
    def lora_link(self, job_lora):
        if job_lora.lora_id is not None:
            return format_html(
                '<a href="{}">{}</a>', reverse("admin:loras_lora_change", args=[job_lora.lora_id]), job_lora.name
            )
        if job_lora.pending:
            return format_html("{} (not fetched yet)", job_lora.url)
        return format_html("{} (deleted since)", job_lora.name)

    @admin.display(description="sha256")
    def short_sha256(self, job_lora):
        return (
            format_html('<code title="{}">{}…</code>', job_lora.sha256, job_lora.sha256[:12])
            if job_lora.sha256
            else "-"
        )


class JobOutputInline(admin.StackedInline):
    model = JobOutput
    fields = ["player", ("fps", "scheduler", "files"), "reproduction"]
    readonly_fields = ["player", "fps", "scheduler", "files", "reproduction"]
    extra = 0
    can_delete = False
    verbose_name, verbose_name_plural = "output", "outputs"

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="video")
    def player(self, output):
        urls = output_urls(output, None)
        return format_html(
            '<video controls width="480" poster="{}" src="{}"></video>', urls["poster_url"] or "", urls["url"]
        )

    @admin.display(description="files")
    def files(self, output):
        links = [
            (label, field.url)
            for label, field in (("MP4", output.video), ("poster", output.poster), ("WebP", output.webp))
            if field
        ]
        return format_html_join(" · ", '<a href="{1}">{0}</a>', links) or "-"

    @admin.display(description="reproduction record")
    def reproduction(self, output):
        if not output.record:
            return "-"
        shown = dict(output.record)
        if isinstance(shown.get("loras"), list) and all(isinstance(x, dict) for x in shown["loras"]):
            shown["loras"] = (
                format_html_join(
                    format_html("<br>"),
                    '{} @ {} <code title="{}">{}…</code>',
                    (
                        (x.get("name"), f"{x.get('multiplier')}", x.get("sha256") or "", (x.get("sha256") or "")[:12])
                        for x in shown["loras"]
                    ),
                )
                or "-"
            )
        if isinstance(shown.get("timings"), dict):  # seconds, rounded (the raw JSON has them exact)
            shown["timings"] = {key: f"{_seconds(value)} s" for key, value in ordered(shown["timings"], TIMING_ORDER)}
        return format_html("{}{}", kv_table(shown, order=RECORD_ORDER), raw_json(output.record))


def _seconds(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


@admin.register(GenerationJob)
class GenerationJobAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "owner",
        "status",
        "progress_percent",
        "priority",
        "lora_stack",
        "prompt_count",
        "created",
    ]
    list_filter = ["status", "owner", "preset", "speed", "scheduler"]
    list_per_page = 50
    search_fields = ["id", "prompts", "job_loras__name"]
    actions = ["cancel_jobs", "retry_jobs", "rerun_jobs"]
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "id",
                    ("owner", "status", "priority"),
                    "progress_text",
                    ("model", "prompt_set"),
                    ("created_at", "started_at", "finished_at"),
                ]
            },
        ),
        ("Options", {"fields": [("preset", "scheduler", "speed"), ("prompt_semantics", "webp", "step_cache")]}),
        ("Prompts", {"fields": ["effective_prompts", "request_json"]}),
        (
            "Worker",
            {"fields": [("attempts", "worker", "heartbeat_at"), ("error_code", "error_message"), "timings_table"]},
        ),
    ]
    readonly_fields = [
        name
        for _, options in fieldsets
        for line in options["fields"]
        for name in (line if isinstance(line, tuple) else (line,))
    ]
    add_fieldsets = [
        (None, {"fields": ["prompt_set"]}),
        (
            "LoRAs",
            {
                "fields": [(f"lora_{i}", f"multiplier_{i}") for i in LORA_ROWS],
                "description": f"Up to {MAX_LORAS} LoRAs, stacked in this order. An empty multiplier takes the "
                f"LoRA's default ({MULTIPLIER_LOW:g} to {MULTIPLIER_HIGH:g}).",
            },
        ),
        ("Options", {"fields": list(JOB_OPTIONS)}),
    ]
    inlines = [JobLoraInline, JobOutputInline]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = type("JobSubmitForm", (JobSubmitForm,), {"current_user": request.user})
        return super().get_form(request, obj, **kwargs)

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else self.fieldsets

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def get_inlines(self, request, obj):
        return [] if obj is None else self.inlines

    def has_change_permission(self, request, obj=None):
        return False if obj is not None else super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        try:
            job = job_submit(owner=request.user, spec=form.spec)
        except ApiError as exc:  # what the form cannot check (the queued-job cap, a race): nothing was created
            messages.error(request, f"{exc.code}: {exc.message}")
            obj.submit_failed = True
            return
        obj.pk = job.pk
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        pass  # the job's LoRAs were written by job_submit

    def log_addition(self, request, obj, message):
        if not getattr(obj, "submit_failed", False):
            super().log_addition(request, obj, message)

    def response_add(self, request, obj, post_url_continue=None):
        if getattr(obj, "submit_failed", False):
            return HttpResponseRedirect(request.get_full_path())
        return super().response_add(request, obj, post_url_continue)

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("owner").prefetch_related("job_loras")

    # the list

    @admin.display(description="id", ordering="id")
    def short_id(self, job):
        return format_html('<span title="{}">{}</span>', job.id, str(job.id)[:8])

    @admin.display(description="progress")
    def progress_percent(self, job):
        return f"{job.percent}%"

    @admin.display(description="LoRAs")
    def lora_stack(self, job):
        return (
            format_html_join(
                format_html("<br>"), "{}@{}", ((jl.name, f"{jl.multiplier:g}") for jl in job.job_loras.all())
            )
            or "-"
        )

    @admin.display(description="prompts")
    def prompt_count(self, job):
        return len(job.prompts or [])

    @admin.display(description="created", ordering="created_at")
    def created(self, job):
        return timezone.localtime(job.created_at).strftime("%Y-%m-%d %H:%M")

    # the change page

    @admin.display(description="progress")
    def progress_text(self, job):
        progress, parts = job.progress or {}, []
        if progress.get("prompts"):
            parts.append(f"prompt {min(progress.get('prompt', 0) + 1, progress['prompts'])}/{progress['prompts']}")
        if progress.get("steps"):
            parts.append(f"step {progress.get('step', 0)}/{progress['steps']}")
        return f"{' · '.join(parts)} ({job.percent}%)" if parts else f"{job.percent}%"

    @admin.display(description="prompts (as rendered)")
    def effective_prompts(self, job):
        return format_html_join(
            "",
            "<p><b>{}</b>{}<br>{}x{}, {} frames @ {} fps, {} steps, guidance {}, seed {}</p>",
            (
                (
                    p["prompt"],
                    format_html("<br>neg: {}", p["neg"]) if p.get("neg") else "",
                    p["width"],
                    p["height"],
                    p["num_frames"],
                    p["fps"],
                    p["sample_steps"],
                    p["guidance_scale"],
                    p["seed"],
                )
                for p in job.prompts
            ),
        )

    @admin.display(description="request")
    def request_json(self, job):
        return raw_json(job.request, "as submitted") if job.request else "-"

    @admin.display(description="timings (s)")
    def timings_table(self, job):
        timings = job.timings or {}
        if not timings:
            return "-"
        overall = {key: value for key, value in timings.items() if not isinstance(value, (list, dict))}
        prompts = [p for p in timings.get("prompts") or [] if isinstance(p, dict)]
        columns = [key for key, _ in ordered({key: None for p in prompts for key in p}, TIMING_ORDER)]
        parts = []
        if overall:
            parts.append(
                format_html(
                    '<table class="kv"><tbody>{}</tbody></table>',
                    format_html_join(
                        "",
                        '<tr><th scope="row">{}</th><td class="num">{}</td></tr>',
                        ((key, _seconds(value)) for key, value in ordered(overall, TIMING_ORDER)),
                    ),
                )
            )
        if prompts:
            head = format_html_join("", "<th>{}</th>", ((c.replace("_", " "),) for c in columns))
            rows = format_html_join(
                "",
                '<tr><th scope="row">{}</th>{}</tr>',
                (
                    (i + 1, format_html_join("", '<td class="num">{}</td>', ((_seconds(p.get(c)),) for c in columns)))
                    for i, p in enumerate(prompts)
                ),
            )
            parts.append(
                format_html(
                    '<table class="timings"><thead><tr><th>prompt</th>{}</tr></thead><tbody>{}</tbody></table>',
                    head,
                    rows,
                )
            )
        others = {key: value for key, value in timings.items() if key not in overall and key != "prompts"}
        if others:
            parts.append(kv_table(others))
        return format_html_join("", "{}", ((part,) for part in parts))

    # actions

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        self._each(request, queryset, lambda job: job_cancel(job=job, actor=request.user), "canceled")

    @admin.action(description="Retry selected jobs")
    def retry_jobs(self, request, queryset):
        self._each(request, queryset, lambda job: job_retry(job=job, actor=request.user), "queued again")

    @admin.action(description="Re-run selected jobs with the same settings")
    def rerun_jobs(self, request, queryset):
        self._each(request, queryset, lambda job: job_rerun(job=job, owner=request.user), "re-run")

    def _each(self, request, queryset, service, done):
        count = 0
        for job in queryset:
            try:
                service(job)
                count += 1
            except ApiError as exc:
                messages.warning(request, f"{job.id}: {exc.message}")
        messages.info(request, f"{count} job(s) {done}.")
