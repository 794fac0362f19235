"""Per-prompt parameters of the ai-toolkit-inference request schema.

Limits and wan21_14b defaults follow the reference server; `resolve_prompt`
turns one request prompt into the values that will actually run (trigger word
replaced, seed drawn, size and frame count snapped the way the model needs)
so that what is stored with a job is what renders.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import asdict, dataclass

MODEL_IDS = ("wan21_14b",)
PROMPT_SEMANTICS = ("reference", "ai-toolkit")
MAX_SEED = 2**31 - 1
SEED_BASE = 42

# field: (min, max) as the reference validates them
LIMITS = {
    "width": (64, 4096),
    "height": (64, 4096),
    "sample_steps": (1, 150),
    "guidance_scale": (0.0, 20.0),
    "seed": (-1, 2**63 - 1),
    "num_frames": (1, 1000),
    "fps": (1, 120),
    "network_multiplier": (-2.0, 2.0),
}
DEFAULTS = {
    "width": 1024,
    "height": 1024,
    "sample_steps": 25,
    "guidance_scale": 4.0,
    "neg": "",
    "num_frames": 41,
    "fps": 16,
}
# The draft preset (step-distill LoRAs, LightX2V's StepDistill-CfgDistill): steps where a prompt names
# none, and the guidance every prompt runs at (CFG distilled into the LoRA; CFG on blurs).
DRAFT_STEPS = 4
DRAFT_GUIDANCE = 1.0
SIZE_MULTIPLE = 16  # VAE factor 8 x patch 2
TEMPORAL_FACTOR = 4


@dataclass(frozen=True)
class PromptParams:
    """One prompt as it renders: every value effective, nothing left to default."""

    prompt: str
    neg: str
    width: int
    height: int
    num_frames: int
    sample_steps: int
    guidance_scale: float
    seed: int
    fps: int
    lora_scale: float | None = None  # ai-toolkit `--m`: one multiplier for the request's own LoRAs of this prompt

    def as_dict(self) -> dict:
        return asdict(self)


class PromptError(ValueError):
    """A prompt that cannot render as written (an inline flag with a bad value)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


# ai-toolkit / sd-scripts inline flags -> request field
AITOOLKIT_FLAGS = {
    "n": "neg",
    "w": "width",
    "h": "height",
    "d": "seed",
    "seed": "seed",
    "l": "guidance_scale",
    "cfg": "guidance_scale",
    "s": "sample_steps",
    "steps": "sample_steps",
    "m": "lora_scale",
    "network_multiplier": "lora_scale",
    "frames": "num_frames",
    "num_frames": "num_frames",
    "fps": "fps",
}
_FLOAT_FIELDS = {"guidance_scale", "lora_scale"}
# Plain decimal numbers only: Python's int() and float() also take "nan", "inf", "1_000" and non-ASCII digits.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _flag_number(field: str, content: str) -> int | float | None:
    """The value of a numeric flag (+-inf for a number too long to be in range), or None when it is not
    a plain decimal number."""
    if field in _FLOAT_FIELDS:  # never NaN; +-inf (1e400) is refused by the range check
        return float(content) if _FLOAT.fullmatch(content) else None
    if not _INT.fullmatch(content):
        return None
    if len(content) > 30:  # past every limit; int() of thousands of digits is refused by Python itself
        return -math.inf if content.startswith("-") else math.inf
    return int(content)


def parse_aitoolkit_prompt(text: str) -> tuple[str, dict]:
    """Split "a photo --w 512 --n blurry" into the prompt and its flag values, as ai-toolkit samples do.

    Unknown flags are ignored, as ai-toolkit ignores them; a known flag with a bad value is an error."""
    prompt, *flags = text.strip().split("--")
    values = {}
    for chunk in flags:
        flag = chunk.split(" ")[0].strip()
        content = chunk[len(flag) :].strip()
        field = AITOOLKIT_FLAGS.get(flag)
        if field is None:
            continue
        if field == "neg":
            values[field] = content
            continue
        value = _flag_number(field, content)
        if value is None:
            raise PromptError(field, f"--{flag} needs a number, got {content[:50]!r}")
        low, high = LIMITS["network_multiplier" if field == "lora_scale" else field]
        if (low is not None and value < low) or (high is not None and value > high):
            raise PromptError(field, f"--{flag} {content[:50]} is outside {low}..{high}")
        values[field] = value
    return prompt.strip(), values


def snap_size(value: int) -> int:
    return max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)


def snap_frames(value: int) -> int:
    """Frame count Wan can produce, rounded as diffusers' WanPipeline rounds it (never past the limit)."""
    if value % TEMPORAL_FACTOR == 1:
        return value
    frames = value // TEMPORAL_FACTOR * TEMPORAL_FACTOR + 1
    return frames if frames <= LIMITS["num_frames"][1] else frames - TEMPORAL_FACTOR


def replace_trigger(prompt: str, trigger_word: str | None) -> str:
    return prompt.replace("[trigger]", trigger_word) if trigger_word else prompt


def random_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED)


def resolve_prompt(
    item: dict,
    *,
    index: int,
    trigger_word: str | None = None,
    semantics: str = "reference",
    name: str | None = None,
    overrides: dict | None = None,
) -> PromptParams:
    """Resolve one validated prompt item of a request to the parameters that will run.

    `semantics="reference"` follows ai-toolkit-inference: `[trigger]` is replaced only when a
    trigger word is set. `"ai-toolkit"` follows the trainer's sampler: inline flags (`--n`, `--w`,
    `--h`, `--seed`, `--cfg`, `--steps`, `--m`, ...) override the fields, and `[trigger]` and
    `[name]` are always replaced (by "" when unset). `overrides` (a preset's fixed values, such as
    the draft preset's guidance) win over both.
    """
    item = {k: v for k, v in item.items() if v is not None}
    text, trigger = item["prompt"], item.get("trigger_word") or trigger_word
    if semantics == "ai-toolkit":
        text, flags = parse_aitoolkit_prompt(text)
        item.update(flags)
        text = text.replace("[trigger]", trigger or "").replace("[name]", name or "")
    else:
        text = replace_trigger(text, trigger)
    item.update(overrides or {})
    value = {**DEFAULTS, **item}
    seed = item.get("seed")
    if seed is None:
        seed = SEED_BASE + index
    elif seed == -1:
        seed = random_seed()
    return PromptParams(
        prompt=text,
        neg=value["neg"],
        width=snap_size(int(value["width"])),
        height=snap_size(int(value["height"])),
        num_frames=snap_frames(int(value["num_frames"])),
        sample_steps=int(value["sample_steps"]),
        guidance_scale=float(value["guidance_scale"]),
        seed=int(seed),
        fps=int(value["fps"]),
        lora_scale=item.get("lora_scale"),
    )
