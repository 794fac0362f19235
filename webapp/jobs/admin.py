"""Admin: submit jobs from a prompt set and LoRAs, watch progress, play outputs, cancel and retry."""
from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from webapp.core.catalog import MAX_LORAS, MULTIPLIER_HIGH, MULTIPLIER_LOW
from webapp.core.errors import ApiError
from webapp.loras.models import Lora
from webapp.prompts.models import PromptSet

from .models import GenerationJob, JobLora, JobOutput, Scheduler
from .serializers import output_urls
from .services import JOB_OPTIONS, job_cancel, job_prompts_resolve, job_rerun, job_retry, job_spec, job_submit


class JobSubmitForm(forms.ModelForm):
    prompt_set = forms.ModelChoiceField(PromptSet.objects.all())
    loras = forms.ModelMultipleChoiceField(Lora.objects.all(), required=False)
    multiplier = forms.FloatField(min_value=MULTIPLIER_LOW, max_value=MULTIPLIER_HIGH, initial=1.0,
                                  help_text="Multiplier applied to each selected LoRA.")
    scheduler = forms.ChoiceField(choices=Scheduler.choices, initial=Scheduler.AUTO)

    class Meta:
        model = GenerationJob
        fields = ["prompt_set", "loras", "multiplier", *(o for o in JOB_OPTIONS if o != "step_cache")]

    def clean(self):
        data = super().clean()
        if len(data.get("loras") or []) > MAX_LORAS:
            raise forms.ValidationError(f"At most {MAX_LORAS} LoRAs can be stacked.")
        prompt_set = data.get("prompt_set")
        if prompt_set is not None:
            items = prompt_set.request_items()
            if not items:
                raise forms.ValidationError("This prompt set has no prompts.")
            try:
                job_prompts_resolve(items, semantics=data.get("prompt_semantics") or "reference")
            except ApiError as exc:
                raise forms.ValidationError(exc.message) from None
            data["prompts"] = items
        return data


class JobLoraInline(admin.TabularInline):
    model = JobLora
    fields = ["lora", "name", "sha256", "multiplier"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


class JobOutputInline(admin.StackedInline):
    model = JobOutput
    fields = ["player", "index", "width", "height", "num_frames", "fps", "seed", "scheduler", "record"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    @admin.display(description="video")
    def player(self, output):
        urls = output_urls(output, None)
        return format_html('<video controls width="480" poster="{}" src="{}"></video>', urls["poster_url"] or "",
                           urls["url"])


@admin.register(GenerationJob)
class GenerationJobAdmin(admin.ModelAdmin):
    list_display = ["id", "owner", "status", "progress_percent", "priority", "lora_stack", "attempts", "worker",
                    "created_at", "finished_at"]
    list_filter = ["status", "model", "owner", "scheduler", "speed"]
    search_fields = ["id", "prompts", "job_loras__name"]
    actions = ["cancel_jobs", "retry_jobs", "rerun_jobs"]
    readonly_fields = ["id", "owner", "model", "status", "priority", "scheduler", "speed", "prompt_semantics", "webp",
                       "prompt_set", "effective_prompts",
                       "progress", "error_code", "error_message", "attempts", "worker", "timings", "created_at",
                       "started_at", "finished_at"]
    inlines = [JobLoraInline, JobOutputInline]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = JobSubmitForm
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        return JobSubmitForm.Meta.fields if obj is None else self.readonly_fields

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else self.readonly_fields

    def get_inlines(self, request, obj):
        return [] if obj is None else self.inlines

    def has_change_permission(self, request, obj=None):
        return False if obj is not None else super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        try:
            spec = job_spec(owner=request.user, loras=[(lora, data["multiplier"]) for lora in data["loras"]],
                            options=data, prompt_set=data["prompt_set"])
            job = job_submit(owner=request.user, spec=spec)
        except ApiError as exc:  # what the form cannot check: the queued-job cap
            messages.error(request, f"{exc.code}: {exc.message}")
            raise
        obj.pk = job.pk
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        pass  # the job's LoRAs were written by job_submit

    @admin.display(description="progress")
    def progress_percent(self, job):
        return f"{job.percent}%"

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("job_loras")  # the LoRAs column

    @admin.display(description="LoRAs")
    def lora_stack(self, job):
        return ", ".join(f"{jl.name}@{jl.multiplier:g}" for jl in job.job_loras.all()) or "-"

    @admin.display(description="prompts (as rendered)")
    def effective_prompts(self, job):
        return format_html_join(
            "", "<p><b>{}</b><br>{}x{}, {} frames @ {} fps, {} steps, guidance {}, seed {}</p>",
            ((p["prompt"], p["width"], p["height"], p["num_frames"], p["fps"], p["sample_steps"],
              p["guidance_scale"], p["seed"]) for p in job.prompts))

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
