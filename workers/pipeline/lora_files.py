"""Inspect LoRA files from their safetensors header alone, before anything loads them.

A LoRA is read as bytes: the 8-byte header length, the JSON header, and the
tensor table checked against the file size by safetensors' own rules (tensors
laid end to end from offset 0 to the last byte, each exactly as long as its
shape and dtype say). Then every LoRA weight is checked against its pair and
against the Wan layer it targets, and every full delta of a ComfyUI/kohya-style
file (`diff`, `diff_b`) against the parameter it changes in the model the LoRA
is for (`check_compatible`). Nothing is unpickled and no tensor is materialised,
so a hostile or broken file is refused with a stable code and a message that
names no path.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from .shapes import WanShape

MAX_HEADER_BYTES = 8 * 1024 * 1024
MAX_BLOCK_INDEX = 9999  # far past any Wan model; keeps absurd block numbers out of the database
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
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
# Known Wan 2.1 transformers: hidden size -> (model id, blocks)
WAN_MODELS = {5120: ("wan21_14b", 40), 1536: ("wan21_1b", 30)}

_FORMATS = (  # (name, pattern matching the key of a LoRA weight of block N)
    ("ai-toolkit", re.compile(r"^diffusion_model\.blocks\.([0-9]+)\.(.+)\.lora_([AB])\.weight$")),
    ("diffusers", re.compile(r"^transformer\.blocks\.([0-9]+)\.(.+)\.lora_([AB])\.weight$")),
    ("kohya", re.compile(r"^diffusion_model\.blocks\.([0-9]+)\.(.+)\.lora_(down|up)\.weight$")),
    ("musubi", re.compile(r"^lora_unet_blocks_([0-9]+)_(.+)\.lora_(down|up)\.weight$")),
)
# Any other LoRA weight (layers outside the blocks): checked against its pair only.
_LORA_WEIGHT = re.compile(r"^(.+)\.lora_(A|B|down|up)\.weight$")
_DOWN = {"A", "down"}

# The linear layers of a Wan 2.1 T2V block, by each format's name: attention maps dim -> dim,
# the feed-forward dim -> ffn_dim ("ffn_in") and back ("ffn_out").
_ORIGINAL_MODULES = {
    **{f"{attn}.{p}": "attn" for attn in ("self_attn", "cross_attn") for p in "qkvo"},
    "ffn.0": "ffn_in",
    "ffn.2": "ffn_out",
}
_BLOCK_MODULES = {
    "ai-toolkit": _ORIGINAL_MODULES,
    "kohya": _ORIGINAL_MODULES,
    "musubi": {name.replace(".", "_"): kind for name, kind in _ORIGINAL_MODULES.items()},
    "diffusers": {
        **{f"{attn}.{p}": "attn" for attn in ("attn1", "attn2") for p in ("to_q", "to_k", "to_v", "to_out.0")},
        "ffn.net.0.proj": "ffn_in",
        "ffn.net.2": "ffn_out",
    },
}


# Full deltas (`X.diff` for a weight, `X.diff_b` for a bias) that a Wan 2.1 T2V transformer can take, by X
# after "diffusion_model.": the shape of X's weight and of its bias (None where X has no bias), in the sizes
# `_model_sizes` names. `workers/pipeline/lora_deltas.py` applies them.
_DELTA_TARGETS = (
    (re.compile(r"blocks\.(?P<block>[0-9]+)\.(self_attn|cross_attn)\.[qkvo]"), ("D", "D"), ("D",)),
    (re.compile(r"blocks\.(?P<block>[0-9]+)\.ffn\.0"), ("F", "D"), ("F",)),
    (re.compile(r"blocks\.(?P<block>[0-9]+)\.ffn\.2"), ("D", "F"), ("D",)),
    (re.compile(r"blocks\.(?P<block>[0-9]+)\.(self_attn|cross_attn)\.norm_[qk]"), ("D",), None),
    (re.compile(r"blocks\.(?P<block>[0-9]+)\.norm3"), ("D",), ("D",)),
    (re.compile(r"blocks\.(?P<block>[0-9]+)\.modulation"), (1, 6, "D"), None),
    (re.compile(r"head\.head"), ("head", "D"), ("head",)),
    (re.compile(r"head\.modulation"), (1, 2, "D"), None),
    (re.compile(r"patch_embedding"), ("D", "in", "patch_t", "patch_h", "patch_w"), ("D",)),
    (re.compile(r"text_embedding\.0"), ("D", "text"), ("D",)),
    (re.compile(r"time_embedding\.0"), ("D", "freq"), ("D",)),
    (re.compile(r"(text|time)_embedding\.2"), ("D", "D"), ("D",)),
    (re.compile(r"time_projection\.1"), ("6D", "D"), ("6D",)),
)
_DELTA = re.compile(r"^diffusion_model\.(.+)\.(diff|diff_b)$")


def _model_sizes(shape: WanShape) -> dict[str, int]:
    """The sizes `_DELTA_TARGETS` names, in a transformer of `shape`."""
    patch_t, patch_h, patch_w = shape.patch_size
    return {
        "D": shape.dim,
        "6D": 6 * shape.dim,
        "F": shape.ffn_dim,
        "text": shape.text_dim,
        "freq": shape.freq_dim,
        "in": shape.in_channels,
        "head": shape.out_channels * patch_t * patch_h * patch_w,
        "patch_t": patch_t,
        "patch_h": patch_h,
        "patch_w": patch_w,
    }


def _delta_target(name: str) -> tuple[re.Match, tuple] | None:
    """A full delta's target (its regex match) and shape, or None where it changes a parameter Wan 2.1 T2V
    does not have."""
    target, kind = _DELTA.match(name).groups()
    for pattern, weight, bias in _DELTA_TARGETS:
        if match := pattern.fullmatch(target):
            shape = bias if kind == "diff_b" else weight
            return (match, shape) if shape else None
    return None


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


def _invalid(message: str) -> LoraFileError:
    return LoraFileError("LORA_HEADER_INVALID", message)


def _mismatch(message: str) -> LoraFileError:
    return LoraFileError("LORA_MODEL_MISMATCH", message)


def _quote(name: str) -> str:
    """A tensor name for a message: names come from the file, so long ones are cut."""
    return repr(name if len(name) <= 120 else name[:117] + "...")


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
    ffn_dim: int | None = None
    delta_shapes: dict[str, list[int]] = field(default_factory=dict)  # full delta -> its shape

    @property
    def software_version(self) -> str | None:
        return _text(self.software.get("version"), 50)

    def as_dict(self) -> dict:
        """The facts kept with the LoRA: all but the delta shapes (hundreds in a step-distill LoRA, checked
        against the model at upload by `check_compatible`)."""
        facts = asdict(self)
        del facts["delta_shapes"]
        return facts


class _NotStrictJson(ValueError):
    """JSON that Python reads but safetensors (serde_json) refuses: NaN, Infinity, nesting past any real header."""


def _refuse_constant(name: str):
    raise _NotStrictJson(f"{name} is not a JSON number")


def _strict_json(text: str):
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise _NotStrictJson("it is nested too deeply") from None


def _storable(text: str) -> bool:
    """Text PostgreSQL can store (header names and metadata are kept with the LoRA)."""
    return "\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text)


def _is_count(value) -> bool:
    """A size or offset as safetensors reads one: an integer that fits its unsigned 64 bits."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def _byte_size(shape: list[int], dtype: str) -> int | None:
    """numel x dtype size, or None where safetensors' 64-bit arithmetic overflows on the way (as it checks)."""
    total = DTYPE_SIZES[dtype]
    for dim in shape:
        total *= dim
        if total >= 2**64:
            return None
    return total


def read_header(fh: BinaryIO, size: int) -> tuple[dict, dict]:
    """Return (tensor table, metadata) of a safetensors file of `size` bytes, checked as safetensors checks it."""
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
        header = _strict_json(raw.decode("utf-8"))
    except _NotStrictJson as exc:
        raise _invalid(f"The safetensors header is not valid JSON: {exc}.") from None
    except ValueError:  # not UTF-8, not JSON
        raise LoraFileError("LORA_NOT_SAFETENSORS", "The safetensors header is not valid JSON.") from None
    if not isinstance(header, dict):
        raise LoraFileError("LORA_NOT_SAFETENSORS", "The safetensors header is not a JSON object.")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LoraFileError("LORA_NOT_SAFETENSORS", "The safetensors metadata must map strings to strings.")
    if not all(_storable(text) for item in metadata.items() for text in item):
        raise _invalid("The safetensors metadata holds a NUL character or an unpaired surrogate.")
    _check_tensor_table(header, data_size=size - 8 - header_len)
    return header, metadata


def _check_tensor_table(header: dict, *, data_size: int) -> None:
    """safetensors' rules: known dtypes, shapes of non-negative ints, each tensor exactly
    numel x dtype size bytes, laid end to end from 0 to the end of the file."""
    spans = []
    for name, spec in header.items():
        if not _storable(name):
            raise _invalid("A tensor name holds a NUL character or an unpaired surrogate.")
        if not isinstance(spec, dict) or not {"dtype", "shape", "data_offsets"} <= spec.keys():
            raise _invalid(f"Tensor {_quote(name)} needs a dtype, a shape and data_offsets.")
        dtype, shape, offsets = spec["dtype"], spec["shape"], spec["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
            raise _invalid(f"Tensor {_quote(name)} has an unknown dtype {str(dtype)[:20]!r}.")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise _invalid(f"Tensor {_quote(name)} has a shape that is not a list of non-negative integers.")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise _invalid(f"Tensor {_quote(name)} has data_offsets that are not two non-negative integers.")
        start, end = offsets
        if end < start:
            raise _invalid(f"Tensor {_quote(name)} ends before it starts.")
        nbytes = _byte_size(shape, dtype)
        if nbytes is None:
            raise _invalid(f"Tensor {_quote(name)} has a shape whose size overflows 64 bits.")
        if end - start != nbytes:
            raise _invalid(f"Tensor {_quote(name)} takes {end - start} bytes, but its shape and dtype need {nbytes}.")
        if end > data_size:
            raise LoraFileError("LORA_FILE_TRUNCATED", f"Tensor {_quote(name)} lies past the end of the file.")
        spans.append((start, end, name))
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            problem = "overlaps the tensor before it" if start < position else f"leaves a gap at byte {position}"
            raise _invalid(f"Tensor {_quote(name)} {problem}; safetensors tensors lie end to end.")
        position = end
    if position != data_size:
        raise _invalid(f"The file has {data_size - position} bytes after its last tensor.")


def _json_field(metadata: dict, key: str):
    """A JSON value from untrusted metadata, or None when it is not strict JSON."""
    try:
        return _strict_json(metadata.get(key) or "null")
    except ValueError:
        return None


def _count(value) -> int | None:
    """A step or epoch counter from untrusted metadata, or None when it is not a sane one."""
    return value if _is_count(value) and value < 2**31 else None


def _text(value, limit: int) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None


def _stored_text(value: str, limit: int) -> str | None:
    """Text decoded from metadata JSON, cut to `limit`, or None where PostgreSQL could not store it."""
    return value[:limit] if _storable(value) else None


def _software(metadata: dict) -> dict:
    """The "software" metadata as flat text and numbers (it is stored and shown; nothing nested)."""
    value = _json_field(metadata, "software")
    if not isinstance(value, dict):
        return {}
    flat = {}
    for key, item in list(value.items())[:50]:
        if not _storable(key):
            continue
        if isinstance(item, str):
            flat[key[:100]] = _stored_text(item, 200)
        elif isinstance(item, bool | int) or (isinstance(item, float) and math.isfinite(item)):
            flat[key[:100]] = item if abs(item) < 2**63 else None
    return flat


def _trigger_words(metadata: dict) -> list[str]:
    freq = _json_field(metadata, "ss_tag_frequency")
    if not isinstance(freq, dict):
        return []
    counts = Counter()
    for tags in freq.values():
        if isinstance(tags, dict):
            counts.update(
                {
                    str(t).strip(): int(n)
                    for t, n in tags.items()
                    if isinstance(n, int | float) and math.isfinite(n) and abs(n) < 2**63
                }
            )
    return [t[:200] for t, _ in counts.most_common(5) if t and _storable(t)]


@dataclass
class _Layer:
    """One LoRA'd linear layer: the shapes of its down (A) and up (B) weights."""

    down: list[int] | None = None
    up: list[int] | None = None
    kind: str | None = None  # "attn", "ffn_in" or "ffn_out" for a block's layers; None outside the blocks


@dataclass
class _Weights:
    key_format: str | None = None
    layers: dict[str, _Layer] = field(default_factory=dict)
    blocks: set[int] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)


def _weights(header: dict) -> _Weights:
    """Every LoRA weight by the layer it targets, with the key format and the blocks and modules named."""
    found = _Weights()
    for name, spec in header.items():
        fmt, match = next(((fmt, m) for fmt, pattern in _FORMATS if (m := pattern.match(name))), (None, None))
        if match is not None:
            if found.key_format not in (None, fmt):
                raise _invalid(f"This LoRA mixes {found.key_format} and {fmt} keys ({_quote(name)}).")
            found.key_format = fmt
            block, module, side = match.groups()
            if len(block) > len(str(MAX_BLOCK_INDEX)) or str(int(block)) != block:
                raise _mismatch(f"LoRA weight {_quote(name)} names block {block[:20]}, which no Wan model has.")
            kind = _BLOCK_MODULES[fmt].get(module)
            if kind is None:
                raise _mismatch(f"LoRA weight {_quote(name)} targets a layer Wan 2.1 T2V blocks do not have.")
            found.blocks.add(int(block))
            found.modules.add(module)
            layer_name = name.rsplit(".lora_", 1)[0]
        elif match := _LORA_WEIGHT.match(name):
            layer_name, side, kind = match.group(1), match.group(2), None
        else:
            continue
        if len(spec["shape"]) != 2:
            raise _invalid(f"LoRA weight {_quote(name)} is not a matrix.")
        if spec["dtype"] not in FLOAT_DTYPES:
            raise _invalid(f"LoRA weight {_quote(name)} is {spec['dtype']}, not a floating-point type.")
        layer = found.layers.setdefault(layer_name, _Layer(kind=kind))
        setattr(layer, "down" if side in _DOWN else "up", spec["shape"])
    return found


def _check_alphas(header: dict, layers: dict[str, _Layer]) -> None:
    for name, spec in header.items():
        if name.endswith(".alpha"):
            if name.removesuffix(".alpha") not in layers:
                raise _invalid(f"{_quote(name)} is the alpha of no LoRA weight in this file.")
            if math.prod(spec["shape"]) != 1:
                raise _invalid(f"{_quote(name)} must hold a single number.")


def _check_pairs(layers: dict[str, _Layer]) -> None:
    """Each layer's down [rank, in] and up [out, rank] weights: both there, one rank, 1 <= rank <= min(in, out)."""
    for name, layer in layers.items():
        if layer.down is None or layer.up is None:
            have, lack = ("up (lora_B)", "down (lora_A)") if layer.down is None else ("down (lora_A)", "up (lora_B)")
            raise _invalid(f"Layer {_quote(name)} has its {have} weight but not its {lack} weight.")
        (rank, fan_in), (fan_out, up_rank) = layer.down, layer.up
        if rank != up_rank:
            raise _invalid(f"Layer {_quote(name)} has rank {rank} in lora_A but {up_rank} in lora_B.")
        if not 1 <= rank <= min(fan_in, fan_out):
            raise _invalid(f"Layer {_quote(name)} has rank {rank}, impossible for a {fan_out}x{fan_in} layer.")


def _deltas(header: dict) -> tuple[set[int], dict[str, list[int]]]:
    """Each full delta checked to change a Wan 2.1 T2V parameter, in floating point; returns the blocks they
    reach and their shapes (`check_compatible` compares those with the model's)."""
    blocks, shapes = set(), {}
    for name, spec in header.items():
        if not _DELTA.match(name):
            continue
        hit = _delta_target(name)
        if hit is None:
            raise _mismatch(f"Full delta {_quote(name)} changes a parameter Wan 2.1 T2V does not have.")
        if block := hit[0].groupdict().get("block"):
            if len(block) > len(str(MAX_BLOCK_INDEX)) or str(int(block)) != block:
                raise _mismatch(f"Full delta {_quote(name)} names block {block[:20]}, which no Wan model has.")
            blocks.add(int(block))
        if spec["dtype"] not in FLOAT_DTYPES:
            raise _invalid(f"Full delta {_quote(name)} is {spec['dtype']}, not a floating-point type.")
        shapes[name] = spec["shape"]
    return blocks, shapes


def _dims(layers: dict[str, _Layer]) -> tuple[int | None, int | None]:
    """The hidden size and feed-forward size every block layer agrees on (LORA_MODEL_MISMATCH if they do not)."""
    hidden = next((layer.down[1] for layer in layers.values() if layer.kind in ("attn", "ffn_in")), None)
    hidden = hidden or next((layer.up[0] for layer in layers.values() if layer.kind == "ffn_out"), None)
    ffn_dim = next((layer.up[0] for layer in layers.values() if layer.kind == "ffn_in"), None)
    ffn_dim = ffn_dim or next((layer.down[1] for layer in layers.values() if layer.kind == "ffn_out"), None)
    for name, layer in layers.items():
        (_, fan_in), (fan_out, _) = layer.down, layer.up
        expected = {"attn": (hidden, hidden), "ffn_in": (hidden, ffn_dim), "ffn_out": (ffn_dim, hidden)}.get(layer.kind)
        if expected and (fan_in, fan_out) != expected:
            raise _mismatch(
                f"Layer {_quote(name)} maps {fan_in} -> {fan_out} features, but this LoRA's other layers are for "
                f"a model of hidden size {hidden} and feed-forward size {ffn_dim} ({expected[0]} -> {expected[1]})."
            )
    return hidden, ffn_dim


def describe(header: dict, metadata: dict) -> LoraInfo:
    """Work out format, rank, targets and base model from a tensor table, checking every LoRA weight's
    shape against its pair and the Wan layer it targets."""
    if not any(pattern.match(name) for name in header for _, pattern in _FORMATS):
        raise LoraFileError(
            "LORA_UNKNOWN_FORMAT",
            "No Wan LoRA weights found (expected keys like 'diffusion_model.blocks.0.self_attn.q.lora_A.weight').",
        )
    found = _weights(header)
    _check_alphas(header, found.layers)
    _check_pairs(found.layers)
    hidden, ffn_dim = _dims(found.layers)
    delta_blocks, delta_shapes = _deltas(header)
    found.blocks |= delta_blocks
    ranks = Counter(layer.down[0] for layer in found.layers.values() if layer.kind)
    alphas = [k for k in header if k.endswith(".alpha")]
    rank = ranks.most_common(1)[0][0]
    software = _software(metadata)
    training = _json_field(metadata, "training_info")
    model = WAN_MODELS.get(hidden)
    dtypes = Counter(spec["dtype"] for spec in header.values())
    return LoraInfo(
        key_format=found.key_format,
        rank=rank,
        alpha=None if alphas else float(rank),
        target_modules=sorted(found.modules),
        num_blocks=max(found.blocks) + 1,
        hidden_size=hidden,
        dtype=dtypes.most_common(1)[0][0],
        tensor_count=len(header),
        base_model=model[0] if model else None,
        software=software,
        training_step=_count(training.get("step")) if isinstance(training, dict) else None,
        training_epoch=_count(training.get("epoch")) if isinstance(training, dict) else None,
        output_name=_text(metadata.get("ss_output_name"), 200),
        trigger_words=_trigger_words(metadata),
        metadata=metadata,
        ffn_dim=ffn_dim,
        delta_shapes=delta_shapes,
    )


def inspect_lora(path: str | Path) -> LoraInfo:
    path = Path(path)
    with path.open("rb") as fh:
        return inspect_lora_file(fh, path.stat().st_size)


def inspect_lora_file(fh: BinaryIO, size: int) -> LoraInfo:
    header, metadata = read_header(fh, size)
    return describe(header, metadata)


def check_compatible(info: LoraInfo, *, shape: WanShape, model_id: str) -> None:
    """Refuse a LoRA whose shapes cannot apply to the transformer of `shape`: its factors' sizes, its blocks,
    and each full delta's shape against the parameter it changes."""
    if info.hidden_size is not None and info.hidden_size != shape.dim:
        made_for = info.base_model or f"a model of hidden size {info.hidden_size}"
        raise _mismatch(f"This LoRA was trained for {made_for}; {model_id} has hidden size {shape.dim}.")
    if info.ffn_dim is not None and info.ffn_dim != shape.ffn_dim:
        raise _mismatch(
            f"This LoRA's feed-forward layers have {info.ffn_dim} features; {model_id} has {shape.ffn_dim}."
        )
    if info.num_blocks > shape.num_layers:
        raise _mismatch(f"This LoRA targets {info.num_blocks} blocks; {model_id} has {shape.num_layers}.")
    sizes = _model_sizes(shape)
    for name, actual in info.delta_shapes.items():
        expected = [sizes.get(dim, dim) for dim in _delta_target(name)[1]]
        if actual != expected:
            raise _mismatch(
                f"Full delta {_quote(name)} has shape {actual}; the parameter it changes in {model_id} has shape "
                f"{expected}."
            )
