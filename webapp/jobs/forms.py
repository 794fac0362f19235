"""The pages' forms: the queue's filters, and the submit form, validated exactly as the API validates.

The submit form's Django forms only collect and redisplay what was typed (plain strings, and the
webhook's event checkboxes); `JobSubmitForm.is_valid` builds the API's request body from it and validates
that with `JobCreateSerializer`, so the limits, defaults and messages are the API's own; the webhook URL is
then judged by `job_submit`, as for the API.
"""

from __future__ import annotations

import json
import re

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model

from webapp.core.catalog import DEFAULT_MODEL, MAX_LORAS, MULTIPLIER_HIGH, MULTIPLIER_LOW
from webapp.core.errors import ApiError
from webapp.loras.selectors import lora_current, lora_list
from workers.pipeline.params import DEFAULTS, DRAFT_GUIDANCE, DRAFT_STEPS, LIMITS, SEED_BASE

from .models import WEBHOOK_EVENTS, GenerationJob, JobStatus, Preset, Scheduler, Speed
from .selectors import job_get, job_lora_shown, prompt_set_choices
from .serializers import JobCreateSerializer, JobOptionsSerializer

PROMPT_ROWS = 3  # typed prompt rows shown on an empty form
OPTION_FIELDS = JobOptionsSerializer().fields  # the API's job options, their defaults and help
OPTION_DEFAULTS = {name: field.default for name, field in OPTION_FIELDS.items()}
WEBHOOK_OPTIONS = ("webhook", "webhook_events_filter")  # the submit page's collapsible webhook section
# What each preset gives a prompt that names none: a row pre-filled from a job leaves these empty, so that
# the preset picked on the form fills them (a draft's 4 steps without CFG do not follow it into a standard job).
PRESET_PROMPT_VALUES = {
    Preset.STANDARD: {"sample_steps": DEFAULTS["sample_steps"], "guidance_scale": DEFAULTS["guidance_scale"]},
    Preset.DRAFT: {"sample_steps": DRAFT_STEPS, "guidance_scale": DRAFT_GUIDANCE},
}


class QueueFilterForm(forms.Form):
    status = forms.ChoiceField(choices=[("", "any status"), *((s, s) for s in JobStatus.values)], required=False)
    owner = forms.ChoiceField(required=False)
    lora = forms.TypedChoiceField(coerce=int, empty_value=None, required=False, label="LoRA")
    q = forms.CharField(
        max_length=200,
        required=False,
        label="Prompt text",
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "words of a prompt"}),
    )

    def __init__(self, data, *, user):
        super().__init__(data)
        usernames = (
            get_user_model().objects.filter(is_active=True).order_by("username").values_list("username", flat=True)
        )
        self.fields["owner"].choices = [("", "anyone"), *((name, name) for name in usernames)]
        self.fields["lora"].choices = [
            ("", "any LoRA"),
            *lora_current(user=user).order_by("name").values_list("pk", "name"),
        ]

    def filters(self) -> dict:
        """The valid filters (an invalid one is shown with its error and left out)."""
        self.is_valid()
        return {name: value for name, value in self.cleaned_data.items() if value not in ("", None)}


def _number(name: str, label: str, *, step: str = "1", placeholder=None, help_text="") -> forms.CharField:
    """A per-prompt number: its default as placeholder, the API's limits as min and max."""
    low, high = LIMITS[name]
    default = DEFAULTS.get(name) if placeholder is None else placeholder
    return forms.CharField(
        required=False,
        label=label,
        help_text=help_text,
        widget=forms.NumberInput(attrs={"min": low, "max": high, "step": step, "placeholder": default}),
    )


class PromptRowForm(forms.Form):
    prompt = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(
            attrs={
                "rows": 2,
                "maxlength": settings.PROMPT_MAX_CHARS,
                "placeholder": "a prompt; [trigger] becomes the trigger word",
            }
        ),
    )
    width = _number("width", "width")
    height = _number("height", "height")
    num_frames = _number("num_frames", "frames")
    sample_steps = _number("sample_steps", "steps")
    guidance_scale = _number("guidance_scale", "guidance", step="any")
    seed = _number("seed", "seed", placeholder="auto", help_text=f"empty: {SEED_BASE} + the prompt's index; -1: random")
    fps = _number("fps", "fps")
    neg = forms.CharField(
        required=False, strip=False, label="negative prompt", widget=forms.TextInput(attrs={"placeholder": "none"})
    )

    def request_item(self) -> dict:
        """The row as a request prompt: the fields typed, or {} for an empty row."""
        item = {name: self[name].value() for name in self.fields}
        item = {name: value for name, value in item.items() if value not in (None, "")}
        return item if any(str(value).strip() for value in item.values()) else {}


class LoraRowForm(forms.Form):
    lora = forms.CharField(required=False, label="LoRA")  # a select of the visible LoRAs, in the template
    multiplier = forms.CharField(
        required=False,
        widget=forms.NumberInput(
            attrs={"min": MULTIPLIER_LOW, "max": MULTIPLIER_HIGH, "step": "0.05", "placeholder": "default"}
        ),
    )


class JobOptionsForm(forms.Form):
    prompt_set = forms.CharField(required=False, label="or a prompt set")
    preset = forms.CharField(
        required=False,
        label="preset",
        widget=forms.Select(choices=[(Preset.STANDARD, "standard"), (Preset.DRAFT, "draft (4 steps, no CFG)")]),
    )
    trigger_word = forms.CharField(
        required=False,
        label="trigger word",
        help_text=("Replaces [trigger]; default: the prompt set's, else the first LoRA's that has one."),
    )
    scheduler = forms.CharField(label="scheduler", widget=forms.Select(choices=Scheduler.choices))
    speed = forms.CharField(
        label="speed", widget=forms.Select(choices=Speed.choices), help_text=OPTION_FIELDS["speed"].help_text
    )
    priority = forms.CharField(
        label="priority",
        widget=forms.NumberInput(attrs={"min": 0, "max": 9}),
        help_text=f"0-9; higher starts first ({settings.PRIORITY_STAFF_ONLY_FROM}-9: staff only).",
    )
    step_cache = forms.CharField(
        required=False,
        label="step cache",
        widget=forms.NumberInput(attrs={"min": 0.01, "max": 1.0, "step": 0.01, "placeholder": "off (exact)"}),
        help_text="FirstBlockCache threshold: faster, not exact.",
    )
    webp = forms.BooleanField(required=False, label="also write an animated WebP")
    prompt_semantics = forms.CharField(
        label="prompt semantics",
        widget=forms.Select(choices=[(s, s) for s in OPTION_FIELDS["prompt_semantics"].choices]),
        help_text="ai-toolkit: inline --flags in prompts, [trigger]/[name] always replaced.",
    )
    webhook = forms.CharField(
        required=False,
        label="webhook URL",
        # a text box, not type=url: the refusal shown is the API's own (WEBHOOK_URL_*)
        widget=forms.TextInput(attrs={"inputmode": "url", "spellcheck": "false", "placeholder": "https://…"}),
        help_text="Where the job's events are POSTed: https to a public address, unless its host is in "
        "WEBHOOK_ALLOWED_HOSTS.",
    )
    webhook_events_filter = forms.MultipleChoiceField(
        required=False,
        label="events",
        choices=[(event, event) for event in WEBHOOK_EVENTS],
        widget=forms.CheckboxSelectMultiple,
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["prompt_set"].widget = forms.Select(
            choices=[("", "— none: the prompts above —"), *prompt_set_choices()]
        )
        self.fields["webhook_events_filter"].help_text = (
            f"progress: at most every {settings.WEBHOOK_PROGRESS_INTERVAL_S:g} s; completed: when it ends, "
            "whatever the outcome."
        )
        # job-new.js shows the picked preset's values as the prompt rows' placeholders
        self.fields["preset"].widget.attrs["data-prompt-values"] = json.dumps(
            {
                preset: {name: str(value) for name, value in values.items()}
                for preset, values in PRESET_PROMPT_VALUES.items()
            }
        )
        self.fields["preset"].help_text = (
            "draft: a quick look, 4 steps without CFG (steps typed for a prompt stay), the server's step-distill LoRA "
            "stacked after yours."
            if settings.DRAFT_LORA
            else "draft: not set up on this server (it needs a step-distill LoRA, DRAFT_LORA)."
        )
        for name, default in OPTION_DEFAULTS.items():
            field = self.fields[name]
            field.initial = default
            if name not in WEBHOOK_OPTIONS and default not in (None, False):
                field.help_text = f"{field.help_text} Default: {default}.".strip()

    def card_fields(self) -> list:
        """The fields of the Options card: all but the prompt set (by the prompts) and the webhook's."""
        return [field for field in self if field.name != "prompt_set" and field.name not in WEBHOOK_OPTIONS]

    def webhook_open(self) -> bool:
        """The webhook section starts open when a URL is in it or it has an error; collapsed otherwise."""
        return any(self[name].errors for name in WEBHOOK_OPTIONS) or bool(self["webhook"].value())


class JobSubmitForm:
    """Prompt rows (or a prompt set), up to MAX_LORAS LoRA rows, and the job options."""

    def __init__(self, data=None, *, user, prompts: list[dict] = (), loras: list[dict] = (), options: dict = None):
        rows = data.get("prompt_rows", "") if data else ""
        rows = int(rows) if rows.isdigit() else max(PROMPT_ROWS, len(prompts) + 1)
        rows = min(max(rows, 1), settings.JOB_MAX_PROMPTS)
        self.loras = list(
            lora_current(user=user).order_by("name").values("pk", "name", "default_multiplier", "trigger_word")
        )
        self.options = JobOptionsForm(data, initial=options or {})
        self.prompt_rows = [
            PromptRowForm(data, prefix=f"prompt-{i}", initial=prompts[i] if i < len(prompts) else None)
            for i in range(rows)
        ]
        self.lora_rows = [
            LoraRowForm(data, prefix=f"lora-{i}", initial=loras[i] if i < len(loras) else None)
            for i in range(MAX_LORAS)
        ]
        for row in self.lora_rows:  # the LoRA picked in the row, for its trigger word
            row.choice = next((lora for lora in self.loras if str(lora["pk"]) == str(row["lora"].value())), None)
        self.errors: list[str] = []  # about the whole request
        self.prompt_errors: list[str] = []
        self.lora_errors: list[str] = []
        self.notes: list[str] = []  # what a pre-fill had to leave out
        self.validated_data: dict = {}

    @classmethod
    def prefilled(cls, query, *, user) -> JobSubmitForm:
        """An empty form, or one pre-filled from ?from=<job id> (its prompts as they rendered, or only the
        one at ?prompt=<index>; LoRAs, multipliers, options), ?lora=<id>, ?prompt_set=<id> or ?preset=."""
        prompts, loras, options, notes = [], [], {}, []
        if query.get("from"):
            try:
                job = job_get(job_id=query["from"])
            except ApiError as exc:
                notes.append(exc.message)
            else:
                prompts, loras, options, notes = cls._from_job(job, user=user)
                index = query.get("prompt", "")
                if index.isdigit() and int(index) < len(prompts):
                    prompts = [prompts[int(index)]]
        if query.get("preset") in Preset.values:
            options["preset"] = query["preset"]
        if query.get("lora", "").isdigit():
            lora = lora_list(user=user).filter(pk=query["lora"]).first()
            if lora is not None:
                loras = [{"lora": lora.pk, "multiplier": lora.default_multiplier}]
        if query.get("prompt_set", "").isdigit():
            options["prompt_set"] = query["prompt_set"]
        form = cls(user=user, prompts=prompts, loras=loras, options=options)
        form.notes = notes
        return form

    @staticmethod
    def _from_job(job: GenerationJob, *, user):
        prompts, preset_values = [], PRESET_PROMPT_VALUES[job.preset]
        for prompt in job.prompts:
            item = {name: prompt.get(name) for name in PromptRowForm.base_fields}
            item |= {name: None for name, value in preset_values.items() if item[name] == value}
            if prompt.get("lora_scale") is not None and job.prompt_semantics == "ai-toolkit":
                item["prompt"] = f"{item['prompt']} --m {prompt['lora_scale']}"
            prompts.append(item)
        usable = set(
            lora_list(user=user).filter(pk__in=[jl.lora_id for jl in job.job_loras.all()]).values_list("pk", flat=True)
        )
        loras, notes = [], []
        job_loras = list(job.job_loras.all())
        draft = job.draft_lora(job_loras)  # left out: the preset adds it again
        for job_lora in (jl for jl in job_loras if jl is not draft):
            if job_lora.lora_id in usable:
                loras.append({"lora": job_lora.lora_id, "multiplier": job_lora.multiplier})
            else:
                shown = job_lora_shown(job_lora, job=job, user=user).name  # a private LoRA stays unnamed
                notes.append(f"LoRA {shown} is gone or not yours to use; it was left out.")
        options = {name: getattr(job, name) for name in OPTION_DEFAULTS}
        if job.preset == Preset.DRAFT:  # the draft fixed the distill scheduler: the one the request named, if any
            options["scheduler"] = job.request.get("scheduler", OPTION_DEFAULTS["scheduler"])
        if job.webhook and not (job.owner_id is not None and job.owner_id == user.pk):
            # someone else's endpoint, expecting their signing secret: not carried over, nor shown
            options = {name: value for name, value in options.items() if name not in WEBHOOK_OPTIONS}
            notes.append("The job's webhook is not yours; it was left out.")
        return prompts, loras, options, notes

    @property
    def has_errors(self) -> bool:
        forms_ = [self.options, *self.prompt_rows, *self.lora_rows]
        return bool(self.errors or self.prompt_errors or self.lora_errors or any(f.errors for f in forms_))

    def payload(self) -> tuple[dict, list[int], list[int]]:
        """The API request body of what was typed, and the form rows its prompts and LoRAs came from."""
        body = {"model": DEFAULT_MODEL}
        for name in self.options.fields:
            value = self.options[name].value()
            if value not in (None, ""):
                body[name] = value
        prompt_rows = [i for i, row in enumerate(self.prompt_rows) if row.request_item()]
        if prompt_rows:
            body["prompts"] = [self.prompt_rows[i].request_item() for i in prompt_rows]
        lora_rows = [i for i, row in enumerate(self.lora_rows) if row["lora"].value()]
        body["loras"] = [
            {"lora": self.lora_rows[i]["lora"].value(), "multiplier": self.lora_rows[i]["multiplier"].value() or None}
            for i in lora_rows
        ]
        return body, prompt_rows, lora_rows

    def is_valid(self) -> bool:
        """Validate as the API does; errors go next to their fields, the request body to `body`."""
        for form in (self.options, *self.prompt_rows, *self.lora_rows):
            form.full_clean()  # collects the strings typed; the serializer judges them
        self.body, self._prompt_rows, self._lora_rows = self.payload()
        serializer = JobCreateSerializer(data=self.body)
        try:
            if serializer.is_valid():
                self.validated_data = serializer.validated_data
                return True
            self._add_errors(serializer.errors)
        except ApiError as exc:  # a rule across fields (OPTIONS_CONFLICT)
            self.add_api_error(exc)
        return False

    def add_api_error(self, exc: ApiError) -> None:
        """A service's refusal: its code and message on top, and next to the field its details name."""
        self.errors.append(f"{exc.code}: {exc.message}")
        for name in exc.details or {}:
            found = re.fullmatch(r"(prompts|loras)\[(\d+)\]\.(\w+)", str(name))
            if found:
                self._add_row_error(found[1], int(found[2]), found[3], [exc.message])
            elif name in self.options.fields:
                self.options.add_error(name, exc.message)

    def _add_errors(self, errors: dict) -> None:
        for name, problems in errors.items():
            if name in ("prompts", "loras"):
                section = self.prompt_errors if name == "prompts" else self.lora_errors
                # an item's errors come keyed by its index; the list's own ones (too many) by a name
                items = problems.items() if isinstance(problems, dict) else enumerate(problems)
                for index, item in items:
                    if isinstance(index, int) and isinstance(item, dict):
                        for field, messages in item.items():
                            self._add_row_error(name, index, field, messages)
                    else:
                        section += _messages(item if isinstance(item, list | dict) else [item])
            elif name in self.options.fields:
                self.options.add_error(name, _messages(problems))
            else:  # the request as a whole: prompts or a prompt set
                self.prompt_errors += _messages(problems)

    def _add_row_error(self, section: str, index: int, field: str, messages) -> None:
        rows, forms_ = (
            (self._prompt_rows, self.prompt_rows) if section == "prompts" else (self._lora_rows, self.lora_rows)
        )
        if index >= len(rows):  # a prompt of the chosen prompt set: no row to mark
            return
        form = forms_[rows[index]]
        form.add_error(field if field in form.fields else None, _messages(messages))


def _messages(problems) -> list[str]:
    if isinstance(problems, dict):
        return [m for value in problems.values() for m in _messages(value)]
    return [str(problem) for problem in problems]
