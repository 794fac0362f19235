"""The prompt-set editor: one compact line per prompt, its other fields folded away.

The forms only carry text; every item is validated by the API's PromptFieldsSerializer, so the
page accepts exactly what the API accepts. Moving, adding and removing items rearrange the
submitted rows and show them again (nothing is saved until Save), which works without JavaScript.
"""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError

from workers.pipeline.params import DEFAULTS, LIMITS, SEED_BASE

from .models import PromptSet
from .serializers import PromptFieldsSerializer

OPTION_FIELDS = [
    "width",
    "height",
    "num_frames",
    "sample_steps",
    "guidance_scale",
    "seed",
    "fps",
    "neg",
    "trigger_word",
]


class PromptSetImportForm(forms.Form):
    """The API's import (a training config file and an optional set name), for the list page."""

    config = forms.FileField(
        label="ai-toolkit config",
        allow_empty_file=True,  # an empty file gets INVALID_TRAINING_CONFIG
        widget=forms.ClearableFileInput(attrs={"accept": ".yaml,.yml,.json"}),
    )
    name = forms.CharField(
        label="Set name",
        max_length=PromptSet._meta.get_field("name").max_length,
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "the run's name"}),
    )


class PromptSetForm(forms.Form):
    name = forms.CharField(max_length=PromptSet._meta.get_field("name").max_length)
    trigger_word = forms.CharField(
        max_length=200,
        required=False,
        help_text="replaces [trigger] in every prompt without its own",
        widget=forms.TextInput(attrs={"placeholder": "none"}),
    )


def _number(name: str, label: str, step: str = "1") -> forms.CharField:
    low, high = LIMITS[name]
    attrs = {"min": low, "max": high, "step": step, "placeholder": DEFAULTS.get(name, "")}
    return forms.CharField(label=label, required=False, widget=forms.NumberInput(attrs=attrs))


class PromptItemForm(forms.Form):
    """One prompt as typed (text only; the serializer decides what is valid)."""

    prompt = forms.CharField(
        required=False,
        strip=False,
        max_length=settings.PROMPT_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 1, "placeholder": "a prompt; [trigger] becomes the trigger word"}),
    )
    width = _number("width", "width")
    height = _number("height", "height")
    num_frames = _number("num_frames", "frames")
    sample_steps = _number("sample_steps", "steps")
    guidance_scale = _number("guidance_scale", "guidance", step="any")
    seed = _number("seed", "seed")
    fps = _number("fps", "fps")
    neg = forms.CharField(
        label="negative prompt", required=False, strip=False, widget=forms.TextInput(attrs={"placeholder": "none"})
    )
    trigger_word = forms.CharField(
        label="trigger word", required=False, max_length=200, widget=forms.TextInput(attrs={"placeholder": "the set's"})
    )

    def options(self) -> list[forms.BoundField]:
        return [self[name] for name in OPTION_FIELDS]

    def option_values(self) -> dict[str, str]:
        return {name: self[name].value() for name in OPTION_FIELDS if self[name].value() not in (None, "")}

    def options_open(self) -> bool:
        """Unfold the settings of an item that has errors in them."""
        return any(self[name].errors for name in OPTION_FIELDS)

    def summary(self) -> str:
        values = self.option_values()
        parts = []
        if "width" in values or "height" in values:
            parts.append(f"{values.get('width', DEFAULTS['width'])}×{values.get('height', DEFAULTS['height'])}")
        labels = {
            "num_frames": "frames",
            "sample_steps": "steps",
            "guidance_scale": "guidance",
            "seed": "seed",
            "fps": "fps",
        }
        parts += [f"{labels[name]} {values[name]}" for name in labels if name in values]
        parts += [
            text for name, text in (("neg", "negative prompt"), ("trigger_word", "own trigger word")) if name in values
        ]
        return ", ".join(parts) if parts else "defaults"


class BasePromptItemFormSet(forms.BaseFormSet):
    default_error_messages = {"too_many_forms": "A prompt set may have at most %(num)d prompts (a job's limit)."}

    @classmethod
    def get_default_prefix(cls):
        return "items"

    def add_fields(self, form, index):
        super().add_fields(form, index)
        if index is not None:  # a prompt without a seed gets 42 + its position
            form.fields["seed"].widget.attrs["placeholder"] = SEED_BASE + index

    def clean(self):
        if not self.forms:
            raise ValidationError("A prompt set needs at least one prompt.")

    def rows(self) -> list[dict[str, str]]:
        """The submitted items as typed, in order (for showing them again rearranged)."""
        return [{name: form[name].value() or "" for name in form.fields} for form in self.forms]

    def validated_items(self) -> list[dict] | None:
        """The items through the API's PromptFieldsSerializer, or None with each error on its field."""
        if not self.is_valid():
            return None
        items = []
        for form in self.forms:
            typed = {name: value for name, value in form.cleaned_data.items() if value != ""}
            serializer = PromptFieldsSerializer(data=typed)
            if serializer.is_valid():
                items.append(dict(serializer.validated_data))
            for name, errors in serializer.errors.items():
                form.add_error(name if name in form.fields else None, [str(error) for error in errors])
        return items if len(items) == len(self.forms) else None


PromptItemFormSet = forms.formset_factory(
    PromptItemForm, formset=BasePromptItemFormSet, extra=0, max_num=settings.JOB_MAX_PROMPTS, validate_max=True
)


def items_rearranged(rows: list[dict[str, str]], action: str) -> list[dict[str, str]]:
    """Apply an editor button (`add`, `up:N`, `down:N`, `remove:N`) to the rows."""
    verb, _, index = action.partition(":")
    rows = list(rows)
    if verb == "add":
        return [*rows, {}]
    if not index.isdigit() or int(index) >= len(rows):
        return rows
    i = int(index)
    if verb == "remove":
        del rows[i]
    elif verb == "up" and i > 0:
        rows[i - 1], rows[i] = rows[i], rows[i - 1]
    elif verb == "down" and i < len(rows) - 1:
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
    return rows


def item_rows(prompt_set: PromptSet) -> list[dict[str, str]]:
    """A saved set's items as the editor shows them."""
    return [
        {name: "" if value is None else str(value) for name, value in item.as_request_item().items()}
        for item in prompt_set.items.all()
    ]
