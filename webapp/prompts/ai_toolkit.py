"""A training run's sample prompts, read from its ai-toolkit config, as prompt-set items.

ai-toolkit renders a run's previews from `config.process[0].sample` (toolkit/config_modules.py
`SampleConfig` and `SampleItem`, jobs/process/BaseSDTrainProcess.py `sample`): the section's
settings, each sample's own keys over them (the `samples:` list of objects), then the prompt's
inline flags (`--n --w --h --seed --cfg --steps --m --frames`, the `prompts:` list of strings)
over both; with `walk_seed` prompt i gets seed + i. This module reads the section the same way
and writes every effective value into the item, so a set renders what the previews showed and
its prompt texts carry no flags. Sizes and frame counts are snapped as a job snaps them, and
`notes` says in sentences what was changed or could not be kept.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import NoReturn

import yaml
from django.conf import settings

from webapp.core.errors import ApiError
from workers.pipeline.params import AITOOLKIT_FLAGS, PromptError, parse_aitoolkit_prompt, snap_frames, snap_size

from .serializers import PromptFieldsSerializer

TRAINING_CONFIG_MAX_BYTES = 2**20  # ai-toolkit configs are a few kilobytes
TRIGGER_WORD_MAX_CHARS = 200  # PromptSet.trigger_word

# What SampleConfig uses for a key the sample section leaves out.
AITOOLKIT_DEFAULTS = {
    "width": 512,
    "height": 512,
    "num_frames": 1,
    "sample_steps": 20,
    "guidance_scale": 7.0,
    "seed": 0,
    "fps": 16,
    "neg": "",
}
INT_FIELDS = ("width", "height", "num_frames", "sample_steps", "seed", "fps")
# Keys of one `samples:` object this module reads (SampleItem also has control images, unused by text-to-video).
SAMPLE_KEYS = {"prompt", "network_multiplier", *AITOOLKIT_DEFAULTS}
SNAPS = (
    ("width", snap_size, "Wan needs multiples of 16"),
    ("height", snap_size, "Wan needs multiples of 16"),
    ("num_frames", snap_frames, "Wan needs 4k+1"),
)
_NUMBER = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")


@dataclass(frozen=True)
class TrainingConfig:
    """The sample section of one ai-toolkit training config, as a prompt set holds it."""

    name: str  # config.name ("" if absent)
    trigger_word: str  # config.process[0].trigger_word ("" if absent)
    network_multiplier: float | None  # sample.network_multiplier, as the previews applied the LoRA
    items: list[dict]  # PromptItem fields (prompt, neg, width, height, num_frames, ...), blank ones left out
    notes: list[str]  # sentences: what was changed or not kept on the way


def _invalid(message: str, *, field: str | None = None, details: dict | None = None) -> NoReturn:
    """Refuse the config; a `field` (its path in the YAML) gets the message as the API's field errors do."""
    if field is not None:
        details = {field: [{"code": "invalid", "message": message}]}
    raise ApiError("INVALID_TRAINING_CONFIG", message, details=details)


def _load(text: str | bytes) -> object:
    size = len(text) if isinstance(text, bytes | bytearray) else len(text.encode("utf-8", "surrogatepass"))
    if size > TRAINING_CONFIG_MAX_BYTES:
        _invalid(
            f"The training config is larger than {TRAINING_CONFIG_MAX_BYTES // 1024} KiB.",
            details={"max_bytes": TRAINING_CONFIG_MAX_BYTES},
        )
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError:
            _invalid("The training config is not UTF-8 text.")
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        problem = exc.problem or exc.context or "not YAML"
        _invalid(f"The training config is not valid YAML (line {line}: {problem}).", details={"line": line})
    except yaml.YAMLError as exc:
        _invalid(f"The training config is not valid YAML ({exc}).")
    except RecursionError:
        _invalid("The training config is nested too deeply to be an ai-toolkit config.")
    except ValueError:  # PyYAML converts integers with int(), which refuses more than 4300 digits
        _invalid("The training config holds a number too long to be a setting.")


def _text(value, where: str, *, max_chars: int | None = None) -> str:
    """A name or trigger word: ai-toolkit takes any YAML scalar; null and false mean none."""
    if value is None or value is False:
        return ""
    if isinstance(value, dict | list):
        _invalid(f"{where} must be text.", field=where)
    text = str(value).strip()
    if max_chars is not None and len(text) > max_chars:
        _invalid(f"{where} is longer than {max_chars} characters.", field=where)
    return text


def _finite(value: int | float) -> bool:
    """Whether a number is finite and within a float's range (an integer past it has no float)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _setting(mapping: dict, key: str, where: str):
    """One setting of the sample section or of one sample: None when absent, else a number (or text for `neg`)."""
    value = mapping.get(key)
    if value is None:
        return None
    if key == "neg":
        if value is False:  # SampleConfig's own default
            return ""
        if not isinstance(value, str):
            _invalid(f"{where}.neg must be text.", field=f"{where}.neg")
        return value
    if isinstance(value, str) and _NUMBER.fullmatch(value):  # ai-toolkit converts a quoted multiplier too
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
        shown = f"{str(value)[:50]!r}" if isinstance(value, str | int | float) else f"a {type(value).__name__}"
        _invalid(f"{where}.{key} must be a number, not {shown}.", field=f"{where}.{key}")
    if key in INT_FIELDS:
        if value != int(value):
            _invalid(f"{where}.{key} must be a whole number, not {value}.", field=f"{where}.{key}")
        return int(value)
    return float(value)


def _sample_section(data) -> tuple[dict, dict, dict]:
    config = data.get("config") if isinstance(data, dict) else None
    if not isinstance(config, dict):
        _invalid("The file has no config section: it is not an ai-toolkit training config.")
    process = config.get("process")
    if not isinstance(process, list) or not process or not isinstance(process[0], dict):
        _invalid("The training config has no config.process list.")
    sample = process[0].get("sample")
    if not isinstance(sample, dict):
        _invalid("The training config has no sample section in config.process[0]: the run made no previews to import.")
    return config, process[0], sample


def _entries(sample: dict) -> tuple[str, list[dict]]:
    """The prompts as `samples:` objects (`samples` wins when both are there, as in SampleConfig)."""
    key = "samples" if sample.get("samples") is not None else "prompts"
    raw = sample.get(key)
    if not raw:
        _invalid("The sample section has no prompts (neither samples nor prompts).")
    if not isinstance(raw, list):
        _invalid(f"sample.{key} must be a list.", field=f"sample.{key}")
    if len(raw) > settings.JOB_MAX_PROMPTS:
        message = f"A prompt set may have at most {settings.JOB_MAX_PROMPTS} prompts; this config has {len(raw)}."
        raise ApiError("TOO_MANY_PROMPTS", message, details={"items": [{"code": "max_length", "message": message}]})
    entries = []
    for i, entry in enumerate(raw):
        where = f"sample.{key}[{i}]"
        if key == "prompts":
            entry = {"prompt": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("prompt"), str) or not entry["prompt"].strip():
            _invalid(f"{where} has no prompt text.", field=where)
        entries.append(entry)
    return key, entries


def _numbered(numbers: list[int]) -> str:
    return f"prompt{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"


def _for(numbers: list[int], total: int) -> str:
    """The phrase ' for prompts 1, 3', or nothing when it is every prompt."""
    return "" if len(numbers) == total else f" for {_numbered(numbers)}"


def _errors(errors: dict, where: str) -> dict:
    return {
        f"{where}.{name}": [{"code": error.code, "message": str(error)} for error in field_errors]
        for name, field_errors in errors.items()
    }


def training_config_read(text: str | bytes) -> TrainingConfig:
    """Read an ai-toolkit training config (YAML, or JSON) into a prompt set's name, trigger word and items.

    Raises ApiError INVALID_TRAINING_CONFIG for a file that does not parse, has no sample section or
    no prompts, or a setting a prompt cannot render with; TOO_MANY_PROMPTS past JOB_MAX_PROMPTS.
    """
    config, process, sample = _sample_section(_load(text))
    key, entries = _entries(sample)
    total = len(entries)
    base = {field: _setting(sample, field, "sample") for field in AITOOLKIT_DEFAULTS}
    base_multiplier = _setting(sample, "network_multiplier", "sample")
    walk_seed = bool(sample.get("walk_seed"))
    defaulted = {"seed"} if walk_seed and base["seed"] is None else set()

    items: list[dict] = []
    multipliers: dict[float, list[int]] = defaultdict(list)
    snapped: dict[tuple, list[int]] = defaultdict(list)
    ignored: dict[str, list[int]] = defaultdict(list)
    renamed: list[int] = []
    seed = None  # BaseSDTrainProcess.sample: the walk, else the last sample's own seed, else the section's
    for i, entry in enumerate(entries):
        n, where = i + 1, f"sample.{key}[{i}]"
        own = {field: _setting(entry, field, where) for field in AITOOLKIT_DEFAULTS} if key == "samples" else {}
        if walk_seed:
            seed = (base["seed"] or 0) + i
        if own.get("seed") is not None:
            seed = own["seed"]
        own["seed"] = seed
        try:
            text, flags = parse_aitoolkit_prompt(entry["prompt"])
        except PromptError as exc:
            _invalid(f"Prompt {n}: {exc.message}.", field=f"{where}.prompt")
        values = {"prompt": text}
        for field, default in AITOOLKIT_DEFAULTS.items():
            value = next((v for v in (flags.get(field), own.get(field), base[field]) if v is not None), None)
            if value is None:
                value = default
                if field != "neg":  # an empty negative prompt is no default worth a note
                    defaulted.add(field)
            values[field] = value
        own_multiplier = _setting(entry, "network_multiplier", where) if key == "samples" else None
        multiplier = next((m for m in (flags.get("lora_scale"), own_multiplier, base_multiplier) if m is not None), 1.0)
        multipliers[multiplier].append(n)
        for chunk in entry["prompt"].strip().split("--")[1:]:
            flag = chunk.split(" ")[0].strip()
            if flag not in AITOOLKIT_FLAGS:
                ignored[f"--{flag}" if flag else "Text after --"].append(n)
        for other in sorted(set(entry) - SAMPLE_KEYS):
            if entry[other] not in (None, False, ""):
                ignored[str(other)[:50]].append(n)
        if "[name]" in text:  # ai-toolkit replaces [name] with the trigger word too
            values["prompt"] = text.replace("[name]", "[trigger]")
            renamed.append(n)

        checked = PromptFieldsSerializer(data=values)
        if not checked.is_valid():
            field, errors = next(iter(checked.errors.items()))
            _invalid(f"Prompt {n}: {field}: {errors[0]}", details=_errors(checked.errors, where))
        item = {name: value for name, value in checked.validated_data.items() if value not in (None, "")}
        for field, snap, why in SNAPS:
            if snap(item[field]) != item[field]:
                snapped[(field, item[field], snap(item[field]), why)].append(n)
                item[field] = snap(item[field])
        items.append(item)

    trigger_word = _text(
        process.get("trigger_word"), "config.process[0].trigger_word", max_chars=TRIGGER_WORD_MAX_CHARS
    )
    notes = []
    if defaulted:
        shown = ", ".join(
            f"{field} {AITOOLKIT_DEFAULTS[field]:g}" for field in AITOOLKIT_DEFAULTS if field in defaulted
        )
        notes.append(f"ai-toolkit's defaults fill what the config leaves out: {shown}.")
    for (field, before, after, why), numbers in snapped.items():
        notes.append(f"{field} {before} -> {after}{_for(numbers, total)} ({why}).")
    if base_multiplier is not None or set(multipliers) != {1.0}:
        usual = max(multipliers, key=lambda m: len(multipliers[m]))
        others = "".join(f", {_numbered(numbers)} at {m:g}" for m, numbers in multipliers.items() if m != usual)
        notes.append(f"The previews used the LoRA at {usual:g}{others}; choose the multiplier when rendering.")
    if renamed:
        notes.append(f"[name] became [trigger]{_for(renamed, total)} (ai-toolkit replaces both with the trigger word).")
    if not trigger_word and any("[trigger]" in item["prompt"] for item in items):
        notes.append(
            "The config has no trigger word: its previews dropped [trigger]; a job's trigger word fills it in."
        )
    for name, numbers in ignored.items():
        notes.append(f"{name} is not kept{_for(numbers, total)}: a text-to-video prompt has no such setting.")
    return TrainingConfig(
        name=_text(config.get("name"), "config.name"),
        trigger_word=trigger_word,
        network_multiplier=base_multiplier,
        items=items,
        notes=notes,
    )
