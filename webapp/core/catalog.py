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


def model_list() -> list[dict]:
    return [{"id": m, "name": MODEL_DESCRIPTIONS.get(m, m), "type": "video", "max_loras": MAX_LORAS} for m in MODEL_IDS]
