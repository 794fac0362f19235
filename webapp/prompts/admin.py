"""Admin: prompt sets, one compact row per prompt; an empty field shows the default it falls back to."""

from django import forms
from django.conf import settings
from django.contrib import admin
from django.db.models import Count

from workers.pipeline.params import DEFAULTS, SEED_BASE

from .models import PromptItem, PromptSet

NUMBERS = ["width", "height", "num_frames", "fps", "sample_steps", "guidance_scale", "seed"]


def _number(placeholder, css="num", step=None):
    attrs = {"placeholder": placeholder, "class": css}
    if step:
        attrs["step"] = step
    return forms.NumberInput(attrs=attrs)


class PromptItemForm(forms.ModelForm):
    class Meta:
        model = PromptItem
        fields = ["position", "prompt", "neg", "trigger_word", *NUMBERS]
        widgets = {
            "position": _number("0", css="num position"),
            "prompt": forms.Textarea(attrs={"rows": 2, "class": "prompt-text"}),
            "neg": forms.Textarea(attrs={"rows": 1, "class": "neg-text", "placeholder": DEFAULTS["neg"] or "none"}),
            "trigger_word": forms.TextInput(attrs={"class": "trigger", "placeholder": "the set's"}),
            **{name: _number(str(DEFAULTS[name])) for name in ["width", "height", "num_frames", "fps", "sample_steps"]},
            "guidance_scale": _number(f"{DEFAULTS['guidance_scale']:g}", step="0.1"),
            "seed": _number(f"{SEED_BASE}+i", css="num seed"),
        }
        labels = {
            "position": "#",
            "num_frames": "frames",
            "sample_steps": "steps",
            "guidance_scale": "cfg",
            "trigger_word": "trigger",
        }
        help_texts = {
            "seed": f"Empty: {SEED_BASE} + the prompt's index; -1: random.",
            "guidance_scale": "Guidance scale.",
            "trigger_word": "Empty: the set's trigger word.",
        }


class PromptItemInline(admin.TabularInline):
    model = PromptItem
    form = PromptItemForm
    extra = 1
    max_num = settings.JOB_MAX_PROMPTS  # a job renders the whole set: the job's limit
    fields = PromptItemForm.Meta.fields

    def get_formset(self, request, obj=None, **kwargs):
        return super().get_formset(request, obj, validate_max=True, **kwargs)


@admin.register(PromptSet)
class PromptSetAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "trigger_word", "prompt_count", "updated_at"]
    search_fields = ["name", "items__prompt"]
    inlines = [PromptItemInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(item_count=Count("items"))

    @admin.display(description="prompts", ordering="item_count")
    def prompt_count(self, prompt_set):
        return prompt_set.item_count

    def save_model(self, request, obj, form, change):
        if not change and obj.owner_id is None:
            obj.owner = request.user
        super().save_model(request, obj, form, change)
