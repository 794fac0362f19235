"""Inspect LoRA files from their safetensors header alone, before anything loads them.

A LoRA is read as bytes: the 8-byte header length, the JSON header, and the
tensor table checked against the file size. Nothing is unpickled and no tensor
is materialised, so a hostile or broken file is refused with a stable code.
"""

from __future__ import annotations

import json
import re
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

MAX_HEADER_BYTES = 8 * 1024 * 1024
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
# Known Wan 2.1 transformers: hidden size -> (model id, blocks)
WAN_MODELS = {5120: ("wan21_14b", 40), 1536: ("wan21_1b", 30)}

_FORMATS = (  # (name, pattern matching the key of a LoRA weight of block N)
    ("ai-toolkit", re.compile(r"^diffusion_model\.blocks\.(\d+)\.(.+)\.lora_([AB])\.weight$")),
    ("diffusers", re.compile(r"^transformer\.blocks\.(\d+)\.(.+)\.lora_([AB])\.weight$")),
    ("kohya", re.compile(r"^diffusion_model\.blocks\.(\d+)\.(.+)\.lora_(down|up)\.weight$")),
    ("musubi", re.compile(r"^lora_unet_blocks_(\d+)_(.+)\.lora_(down|up)\.weight$")),
)
_SELF_ATTN_Q = {"self_attn.q", "attn1.to_q", "self_attn_q"}


PICKLE_MESSAGE = (
    "This looks like a pickled PyTorch checkpoint; only .safetensors LoRAs are accepted and pickles are never loaded."
)


NOT_SAFETENSORS_MESSAGE = "This file is not a safetensors file."


class LoraFileError(ValueError):
    """A file that cannot be used as a LoRA; `code` is stable for API clients."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class LoraInfo:
    key_format: str
    rank: int
    alpha: float | None
    target_modules: list[str]
    num_blocks: int
    hidden_size: int | None
    dtype: str
    tensor_count: int
    base_model: str | None
    software: dict = field(default_factory=dict)
    training_step: int | None = None
    training_epoch: int | None = None
    output_name: str | None = None
    trigger_words: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    @property
    def software_version(self) -> str | None:
        return _text(self.software.get("version"), 50)

    def as_dict(self) -> dict:
        return asdict(self)


def read_header(fh: BinaryIO, size: int) -> tuple[dict, dict]:
    """Return (tensor table, metadata) of a safetensors file of `size` bytes."""
    head = fh.read(8)
    if head[:4] == b"PK\x03\x04":
        raise LoraFileError("LORA_NOT_SAFETENSORS", PICKLE_MESSAGE)
    if len(head) < 8:
        raise LoraFileError("LORA_FILE_TRUNCATED", "The file is too short to be a safetensors file.")
    # A pickle starts with 0x80, but so does a safetensors header whose length is 128 mod 256:
    # only call it a pickle once it fails to read as safetensors.
    maybe_pickle = head[:1] == b"\x80"
    (header_len,) = struct.unpack("<Q", head)
    if maybe_pickle and (header_len > MAX_HEADER_BYTES or 8 + header_len > size):
        raise LoraFileError("LORA_NOT_SAFETENSORS", PICKLE_MESSAGE)
    # The format requires the JSON header to open with "{": anything else (a text file, whose first
    # bytes read as an absurd length) is no safetensors file at all, whatever its length claims.
    start = fh.read(1)
    if start and (start != b"{" or header_len < 2):
        raise LoraFileError("LORA_NOT_SAFETENSORS", NOT_SAFETENSORS_MESSAGE)
    if header_len > MAX_HEADER_BYTES:
        raise LoraFileError(
            "LORA_HEADER_TOO_LARGE",
            f"The safetensors header claims {header_len} bytes; at most {MAX_HEADER_BYTES} are accepted.",
        )
    if 8 + header_len > size:
        raise LoraFileError("LORA_FILE_TRUNCATED", "The safetensors header runs past the end of the file.")
    raw = start + fh.read(header_len - len(start))
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LoraFileError("LORA_NOT_SAFETENSORS", "The safetensors header is not valid JSON.") from None
    if not isinstance(header, dict):
        raise LoraFileError("LORA_NOT_SAFETENSORS", "The safetensors header is not a JSON object.")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LoraFileError("LORA_NOT_SAFETENSORS", "The safetensors metadata must map strings to strings.")
    data_size = size - 8 - header_len
    for name, spec in header.items():
        try:
            dtype, shape, (start, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise TypeError("shape")
            numel = 1
            for dim in shape:
                numel *= int(dim)
            valid = dtype in DTYPE_SIZES and 0 <= start <= end and end - start == numel * DTYPE_SIZES[dtype]
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise LoraFileError("LORA_NOT_SAFETENSORS", f"Tensor {name!r} has an invalid entry in the header.")
        if end > data_size:
            raise LoraFileError("LORA_FILE_TRUNCATED", f"Tensor {name!r} lies past the end of the file.")
    return header, metadata


def _json_field(metadata: dict, key: str):
    try:
        return json.loads(metadata.get(key) or "null")
    except json.JSONDecodeError:
        return None


def _count(value) -> int | None:
    """A step or epoch counter from untrusted metadata, or None when it is not a sane one."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None


def _text(value, limit: int) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None


def _trigger_words(metadata: dict) -> list[str]:
    freq = _json_field(metadata, "ss_tag_frequency")
    if not isinstance(freq, dict):
        return []
    counts = Counter()
    for tags in freq.values():
        if isinstance(tags, dict):
            counts.update({str(t).strip(): int(n) for t, n in tags.items() if isinstance(n, (int, float))})
    return [t[:200] for t, _ in counts.most_common(5) if t]


def describe(header: dict, metadata: dict) -> LoraInfo:
    """Work out format, rank, targets and base model from a tensor table."""
    key_format, blocks, modules, ranks, hidden = None, set(), set(), Counter(), None
    for name, spec in header.items():
        fmt, match = next(((fmt, m) for fmt, pattern in _FORMATS if (m := pattern.match(name))), (None, None))
        if match is None:
            continue
        key_format = key_format or fmt
        if len(spec["shape"]) != 2:
            raise LoraFileError("LORA_NOT_SAFETENSORS", f"LoRA weight {name!r} is not a matrix.")
        block, module, side = int(match.group(1)), match.group(2), match.group(3)
        blocks.add(block)
        modules.add(module)
        if side in ("A", "down"):
            ranks[spec["shape"][0]] += 1
            if module in _SELF_ATTN_Q:
                hidden = spec["shape"][1]
    if key_format is None:
        raise LoraFileError(
            "LORA_UNKNOWN_FORMAT",
            "No Wan LoRA weights found (expected keys like 'diffusion_model.blocks.0.self_attn.q.lora_A.weight').",
        )
    alphas = [v for k, v in header.items() if k.endswith(".alpha")]
    rank = ranks.most_common(1)[0][0]
    software = _json_field(metadata, "software")
    training = _json_field(metadata, "training_info")
    model = WAN_MODELS.get(hidden)
    dtypes = Counter(spec["dtype"] for spec in header.values())
    return LoraInfo(
        key_format=key_format,
        rank=rank,
        alpha=None if alphas else float(rank),
        target_modules=sorted(modules),
        num_blocks=max(blocks) + 1,
        hidden_size=hidden,
        dtype=dtypes.most_common(1)[0][0],
        tensor_count=len(header),
        base_model=model[0] if model else None,
        software=software if isinstance(software, dict) else {},
        training_step=_count(training.get("step")) if isinstance(training, dict) else None,
        training_epoch=_count(training.get("epoch")) if isinstance(training, dict) else None,
        output_name=_text(metadata.get("ss_output_name"), 200),
        trigger_words=_trigger_words(metadata),
        metadata=metadata,
    )


def inspect_lora(path: str | Path) -> LoraInfo:
    path = Path(path)
    with path.open("rb") as fh:
        return inspect_lora_file(fh, path.stat().st_size)


def inspect_lora_file(fh: BinaryIO, size: int) -> LoraInfo:
    header, metadata = read_header(fh, size)
    return describe(header, metadata)


def check_compatible(info: LoraInfo, *, hidden_size: int, num_layers: int, model_id: str) -> None:
    """Refuse a LoRA whose shapes cannot apply to the given transformer."""
    if info.hidden_size is not None and info.hidden_size != hidden_size:
        made_for = info.base_model or f"a model of hidden size {info.hidden_size}"
        raise LoraFileError(
            "LORA_MODEL_MISMATCH", f"This LoRA was trained for {made_for}; {model_id} has hidden size {hidden_size}."
        )
    if info.num_blocks > num_layers:
        raise LoraFileError(
            "LORA_MODEL_MISMATCH", f"This LoRA targets {info.num_blocks} blocks; {model_id} has {num_layers}."
        )
