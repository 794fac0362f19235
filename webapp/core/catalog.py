"""The models this deployment serves and the transformer shapes LoRAs must fit."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from django.conf import settings

from workers.pipeline.params import LIMITS, MODEL_IDS
from workers.pipeline.shapes import WAN_14B_TRANSFORMER, WanShape

from .errors import ApiError

DEFAULT_MODEL = "wan21_14b"
MAX_LORAS = 4  # LoRAs stacked in one job
MULTIPLIER_LOW, MULTIPLIER_HIGH = LIMITS["network_multiplier"]  # a LoRA's multiplier, everywhere it is taken
MODEL_DESCRIPTIONS = {"wan21_14b": "Wan 2.1 T2V 14B (text to video)"}


def model_check(model_id: str) -> str:
    if model_id not in MODEL_IDS:
        raise ApiError(
            "UNKNOWN_MODEL",
            f"Unknown model {model_id!r}; available: {', '.join(MODEL_IDS)}.",
            details={"model": model_id, "available": list(MODEL_IDS)},
        )
    return model_id


@lru_cache(maxsize=4)
def _transformer_config(model_path: str) -> dict:
    config = Path(model_path) / "transformer" / "config.json"
    if config.is_file():
        return json.loads(config.read_text())
    return WAN_14B_TRANSFORMER  # a hub id or a path this process cannot see: the real 14B shapes


def model_shape(model_id: str) -> WanShape:
    """Shape of the transformer that renders `model_id` in this deployment."""
    model_check(model_id)
    return WanShape.of(_transformer_config(settings.WAN_MODEL_PATH))


def model_limits(model_id: str) -> dict:
    """The largest video this deployment's checkpoint can place: its rotary embedding covers
    `rope_max_seq_len` positions along each of latent frames (4 video frames each), height and width
    (16 px each, the VAE's 8 times the 2x2 patch)."""
    model_check(model_id)
    positions = int(_transformer_config(settings.WAN_MODEL_PATH).get("rope_max_seq_len", 1024))
    return {"max_width": positions * 16, "max_height": positions * 16, "max_num_frames": (positions - 1) * 4 + 1}


def model_size_check(model_id: str, prompts: list[dict]) -> None:
    """Refuse, at submit, a size the checkpoint cannot render (UNSUPPORTED_SIZE, with its limits)."""
    limits = model_limits(model_id)
    for index, prompt in enumerate(prompts):
        too_big = [f for f in ("width", "height", "num_frames") if prompt[f] > limits[f"max_{f}"]]
        if too_big:
            raise ApiError(
                "UNSUPPORTED_SIZE",
                f"prompts[{index}]: {prompt['width']}x{prompt['height']}x{prompt['num_frames']} is past what this "
                f"deployment's model renders (at most {limits['max_width']}x{limits['max_height']} px, "
                f"{limits['max_num_frames']} frames).",
                details={"prompt": index, "fields": too_big, **limits},
            )


def model_list() -> list[dict]:
    return [{"id": m, "name": MODEL_DESCRIPTIONS.get(m, m), "type": "video", "max_loras": MAX_LORAS} for m in MODEL_IDS]
