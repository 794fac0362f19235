"""The new-sweep page's form: a name, the prompts (typed, one per line, or a prompt set), up to three
axes, an optional base LoRA stack and the common job options, validated exactly as the API validates.

As on the submit page, the Django forms here only collect and redisplay what was typed; `SweepForm`
builds the API's request body from it and hands that to `SweepCreateSerializer`, so limits, codes and
messages are the API's own, and each error is put back next to the field it names.
"""

from __future__ import annotations

import re
from itertools import groupby

from django import forms
from django.db.models import F

from webapp.core.catalog import DEFAULT_MODEL, MAX_LORAS
from webapp.core.errors import ApiError
from webapp.jobs.forms import OPTION_DEFAULTS, JobOptionsForm, LoraRowForm, PromptRowForm
from webapp.jobs.selectors import prompt_set_choices
from webapp.loras.selectors import lora_current, lora_list, lora_run

from .models import AXIS_FIELDS
from .serializers import SweepCreateSerializer

MAX_AXES = 3
OTHER_LORAS = "LoRAs of no training run"
SIZE_FIELDS = ("width", "height", "num_frames", "sample_steps", "guidance_scale")  # set on every prompt
OPTION_NAMES = ("scheduler", "speed", "preset", "priority")
AXIS_HELP = {  # what an axis' values box takes (a lora axis has its picker instead)
    "multiplier": "numbers, comma-separated, e.g. 0.5, 0.8, 1.0",
    "seed": "whole numbers, comma-separated",
    "prompt": "one prompt per line (then leave the prompts above empty)",
}


class SweepFieldsForm(forms.Form):
    """Name, prompts and the job options every cell shares (the API's own fields, as on the submit page)."""

    name = forms.CharField(max_length=200, required=False, widget=forms.TextInput(attrs={"size": 48}))
    prompts = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(
            attrs={"rows": 3, "placeholder": "one prompt per line; [trigger] becomes the trigger word"}
        ),
    )
    prompt_set = forms.CharField(required=False, label="or a prompt set")
    width = PromptRowForm.base_fields["width"]
    height = PromptRowForm.base_fields["height"]
    num_frames = PromptRowForm.base_fields["num_frames"]
    sample_steps = PromptRowForm.base_fields["sample_steps"]
    guidance_scale = PromptRowForm.base_fields["guidance_scale"]
    scheduler = JobOptionsForm.base_fields["scheduler"]
    speed = JobOptionsForm.base_fields["speed"]
    preset = JobOptionsForm.base_fields["preset"]
    priority = JobOptionsForm.base_fields["priority"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["prompt_set"].widget = forms.Select(
            choices=[("", "— none: the prompts above —"), *prompt_set_choices()]
        )
        for name in OPTION_NAMES:
            self.fields[name].initial = OPTION_DEFAULTS[name]


class AxisForm(forms.Form):
    field = forms.ChoiceField(
        required=False, label="compare", choices=[("", "— no axis —"), *((name, name) for name in AXIS_FIELDS)]
    )
    values = forms.CharField(required=False, strip=False, widget=forms.Textarea(attrs={"rows": 2}))
    loras = forms.MultipleChoiceField(required=False, label="LoRAs", choices=())


def lora_groups(*, user) -> list[tuple[str, list[tuple[str, str]]]]:
    """The current versions of the LoRAs `user` may see, grouped by training run (runs by name, LoRAs of
    no run last) and ordered by training step within a run: the choices of a `lora` axis."""
    loras = (
        lora_current(user=user)
        .order_by("training_run", F("training_step").asc(nulls_last=True), "-name")
        .values("pk", "name", "training_run", "training_step")
    )
    groups = []
    for run, items in groupby(loras, key=lambda lora: lora["training_run"]):
        choices = [
            (str(lora["pk"]), lora["name"] + (f" · step {lora['training_step']}" if lora["training_step"] else ""))
            for lora in items
        ]
        groups.append((run or OTHER_LORAS, choices))
    groups.sort(key=lambda group: group[0] == OTHER_LORAS)
    return groups


class SweepForm:
    """The fields, MAX_AXES axis rows and MAX_LORAS base LoRA rows."""

    text_fields = ("name", "prompts", "prompt_set")  # the rest are the options
    axis_help = list(AXIS_HELP.items())

    def __init__(self, data=None, *, user, initial: dict | None = None, axes=(), base_loras=()):
        self.fields = SweepFieldsForm(data, initial=initial or {})
        groups = lora_groups(user=user)
        self.runs = [run for run, _ in groups if run != OTHER_LORAS]  # for "compare the checkpoints of"
        self.run = ""
        self.axes = [
            AxisForm(data, prefix=f"axis-{i}", initial=axes[i] if i < len(axes) else None) for i in range(MAX_AXES)
        ]
        for axis in self.axes:
            axis.fields["loras"].choices = groups
        self.loras = list(lora_current(user=user).order_by("name").values("pk", "name", "default_multiplier"))
        self.base_rows = [
            LoraRowForm(data, prefix=f"base-{i}", initial=base_loras[i] if i < len(base_loras) else None)
            for i in range(MAX_LORAS)
        ]
        for row in self.base_rows:
            row.choice = next((lora for lora in self.loras if str(lora["pk"]) == str(row["lora"].value())), None)
        self.errors: list[str] = []  # about the whole request
        self.prompt_errors: list[str] = []
        self.axis_errors: list[str] = []
        self.base_errors: list[str] = []
        self.notes: list[str] = []  # what a pre-fill had to leave out
        self.validated_data: dict = {}
        self.body: dict = {}

    # --- pre-fill -------------------------------------------------------------------------------------

    @classmethod
    def prefilled(cls, query, *, user) -> SweepForm:
        """An empty form, or one pre-filled from ?run=<training run> (its checkpoints by step against
        multiplier 1.0) or from the submit page's fields ("Compare as a sweep": prompts, LoRAs, options)."""
        if query.get("run"):
            return cls._from_run(query["run"], user=user)
        if any(key.startswith(("prompt-", "lora-")) for key in query) or query.get("prompt_set"):
            return cls._from_submit_page(query, user=user)
        return cls(user=user)

    @classmethod
    def _from_run(cls, run: str, *, user) -> SweepForm:
        checkpoints = [str(pk) for pk in lora_run(run=run, user=user).values_list("pk", flat=True)]
        form = cls(
            user=user,
            initial={"name": f"Compare checkpoints of {run}"},
            axes=[{"field": "lora", "loras": checkpoints}, {"field": "multiplier", "values": "1.0"}],
        )
        form.run = run
        if not checkpoints:
            form.notes.append(f"No checkpoints of the training run “{run}” that you may use.")
        return form

    @classmethod
    def _from_submit_page(cls, query, *, user) -> SweepForm:
        rows = sorted({int(m[1]) for key in query if (m := re.fullmatch(r"prompt-(\d+)-prompt", key))})
        texts = [" ".join(query.get(f"prompt-{i}-prompt", "").split()) for i in rows]
        initial = {"prompts": "\n".join(text for text in texts if text)}
        for name in SIZE_FIELDS:  # the first prompt row that sets a value speaks for the sweep
            initial[name] = next((query[f"prompt-{i}-{name}"] for i in rows if query.get(f"prompt-{i}-{name}")), "")
        for name in ("prompt_set", *OPTION_NAMES):
            if query.get(name):
                initial[name] = query[name]
        visible = {str(lora["pk"]): lora for lora in lora_list(user=user).values("pk", "name")}
        loras = [
            {"lora": query[key], "multiplier": query.get(key[: -len("lora")] + "multiplier", "")}
            for key in sorted(key for key in query if re.fullmatch(r"lora-\d+-lora", key))
            if query[key] in visible
        ]
        if loras:
            initial["name"] = f"Compare {visible[loras[0]['lora']]['name']}"
        axis = {"field": "multiplier", "values": "0.5, 0.75, 1.0"} if loras else {"field": "seed", "values": ""}
        form = cls(user=user, initial=initial, axes=[axis], base_loras=loras)
        form.notes.append("Pick what to compare in the axes below, then create the sweep.")
        return form

    # --- validation -----------------------------------------------------------------------------------

    @property
    def has_errors(self) -> bool:
        forms_ = [self.fields, *self.axes, *self.base_rows]
        return bool(
            self.errors or self.prompt_errors or self.axis_errors or self.base_errors or any(f.errors for f in forms_)
        )

    def payload(self) -> dict:
        """The API request body of what was typed."""
        value = {name: self.fields[name].value() for name in self.fields.fields}
        size = {name: value[name] for name in SIZE_FIELDS if value[name] not in (None, "")}
        body = {"name": value["name"] or "", "model": DEFAULT_MODEL}
        body.update({name: value[name] for name in OPTION_NAMES if value[name] not in (None, "")})
        lines = _lines(value["prompts"] or "")
        if lines:
            body["prompts"] = [{"prompt": line, **size} for line in lines]
        if value["prompt_set"]:
            body["prompt_set"] = value["prompt_set"]
        self._axis_rows = [i for i, axis in enumerate(self.axes) if axis["field"].value()]
        body["axes"] = [self._axis(self.axes[i], size) for i in self._axis_rows]
        self._base_rows = [i for i, row in enumerate(self.base_rows) if row["lora"].value()]
        body["base_loras"] = [
            {"lora": self.base_rows[i]["lora"].value(), "multiplier": self.base_rows[i]["multiplier"].value() or None}
            for i in self._base_rows
        ]
        return body

    @staticmethod
    def _axis(axis: AxisForm, size: dict) -> dict:
        field = axis["field"].value()
        text = axis["values"].value() or ""
        if field == "lora":
            values = list(axis["loras"].value() or [])
        elif field == "prompt":
            values = [{"prompt": line, **size} for line in _lines(text)]
        else:  # numbers; what does not parse goes as typed, for the API's message
            values = [_number(item, float if field == "multiplier" else int) for item in re.split(r"[\s,;]+", text)]
            values = [item for item in values if item != ""]
        return {"field": field, "values": values}

    def is_valid(self) -> bool:
        for form in (self.fields, *self.axes, *self.base_rows):
            form.full_clean()  # collects the strings typed; the serializer judges them
        self.body = self.payload()
        if self.body.get("prompt_set") and any(self.fields[name].value() for name in SIZE_FIELDS):
            self.fields.add_error(
                "prompt_set", "A prompt set's prompts keep their own size, frames, steps and guidance: clear those."
            )
            return False
        serializer = SweepCreateSerializer(data=self.body)
        try:
            if serializer.is_valid():
                self.validated_data = serializer.validated_data
                return True
            self._add_errors(serializer.errors)
        except ApiError as exc:  # a rule across fields
            self.add_api_error(exc)
        return False

    def add_api_error(self, exc: ApiError) -> None:
        """A refusal with a code: code and message on top, and the message next to what its details name."""
        self.errors.append(f"{exc.code}: {exc.message}")
        for name in exc.details or {}:
            self._place(str(name), [exc.message], listed=False)

    def _add_errors(self, errors: dict) -> None:
        for name, messages in _flatten(errors):
            self._place(name, messages, listed=True)
        if not self.has_errors:  # nothing could be placed: say so on top
            self.errors.append("The sweep was refused; please check the fields.")

    def _place(self, name: str, messages: list[str], *, listed: bool) -> None:
        """Put `messages` about request field `name` ("axes[1].values", "prompts[0].width") where it was typed."""
        found = re.match(r"(\w+)(?:\[(\d+)\])?(?:\.(\w+))?", name)
        top, index, part = found[1], found[2], found[3]
        index = int(index) if index is not None else None
        if top == "axes" and index is not None and index < len(self._axis_rows):
            axis = self.axes[self._axis_rows[index]]
            target = "field" if part == "field" else "loras" if axis["field"].value() == "lora" else "values"
            axis.add_error(target, messages)
        elif top == "axes":
            self.axis_errors += messages
        elif top == "base_loras" and index is not None and index < len(self._base_rows):
            row = self.base_rows[self._base_rows[index]]
            row.add_error(part if part in row.fields else None, messages)
        elif top == "base_loras":
            self.base_errors += messages
        elif top in ("prompts", "prompt_set", "request"):
            prefix = f"prompt {index + 1}: " if index is not None else ""
            self.prompt_errors += [prefix + message for message in messages]
        elif top in self.fields.fields:
            self.fields.add_error(top, messages)
        elif listed:
            self.errors += [f"{name}: {message}" for message in messages]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        return text


def _flatten(detail, prefix: str = "") -> list[tuple[str, list[str]]]:
    """A serializer's nested errors as (request field, messages): {"axes": [{}, {"values": [..]}]} ->
    [("axes[1].values", [..])]."""
    if isinstance(detail, dict):
        return [
            pair
            for key, value in detail.items()
            for pair in _flatten(
                value,
                f"{prefix}[{key}]"
                if isinstance(key, int)
                else prefix
                if key == "non_field_errors"
                else f"{prefix}.{key}"
                if prefix
                else str(key),
            )
        ]
    if isinstance(detail, list) and detail and all(isinstance(item, str) for item in detail):
        return [(prefix or "request", [str(item) for item in detail])]
    if isinstance(detail, list):
        return [pair for index, item in enumerate(detail) for pair in _flatten(item, f"{prefix}[{index}]")]
    return [(prefix or "request", [str(detail)])]
