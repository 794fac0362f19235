"""Full deltas: the `diff` and `diff_b` tensors of ComfyUI/kohya-style LoRAs, applied at the stack's multipliers.

Step-distillation LoRAs (LightX2V's among them) are written with the original Wan names: low-rank
factors (`diffusion_model.blocks.0.self_attn.q.lora_down.weight`, `.lora_up.weight`, `.alpha`) and
whole-tensor deltas, `X.diff` for a weight and `X.diff_b` for a bias (`blocks.0.norm3.diff`). Each
delta means what ComfyUI and LightX2V make of it: the parameter plus the multiplier times the delta.

A file is split in two (`LoraFile.read`). What diffusers' Wan converter loads as a peft adapter
stays with it: the factors (alpha / rank folded in by the converter) and the `diff_b` of a layer
that has factors, which becomes that layer's `lora_B.bias` (the multiplier times the delta, as
peft scales a LoRA bias). Every other delta (norms, modulation, embeddings, the head, any
weight's `diff`), which the converter drops or cannot place, is held here by the diffusers name
of its parameter and applied in place (`FullDeltas`):

    parameter = base + m1 * delta1 + m2 * delta2 + ...

in float32 over a copy of the base kept the first time a delta reaches the parameter, then
stored in the parameter's dtype; a stack without deltas on it puts the base back bit for bit.
Parameters keep their tensors, so compiled blocks stay valid. Factors on layers outside the
blocks come with no alpha the converter reads, so their alpha is folded in here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

PREFIX = "diffusion_model."
DELTA_SUFFIXES = (".diff", ".diff_b")
_FACTOR = re.compile(r"^(.+)\.lora_(A|B|down|up)\.weight$")
_BLOCK_LAYER = re.compile(r"^diffusion_model\.blocks\.[0-9]+\.")  # the converter reads these layers' alphas


def is_delta(key: str) -> bool:
    return key.startswith(PREFIX) and key.endswith(DELTA_SUFFIXES)


def _original_parameter(key: str) -> str:
    """The original Wan parameter a delta key changes: `X.diff` -> X.weight (X itself where X is a
    parameter, as `blocks.0.modulation`), `X.diff_b` -> X.bias."""
    layer = key[len(PREFIX) :].rsplit(".", 1)[0]
    if key.endswith(".diff_b"):
        return f"{layer}.bias"
    return layer if layer.endswith("modulation") else f"{layer}.weight"


def diffusers_names(originals: list[str]) -> dict[str, str]:
    """Original Wan parameter names -> the diffusers transformer's, by diffusers' own checkpoint
    conversion (`blocks.0.norm3.weight` -> `blocks.0.norm2.weight`, `head.modulation` -> `scale_shift_table`)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    renamed = convert_wan_transformer_to_diffusers({name: name for name in originals})
    return {original: name for name, original in renamed.items()}


def split_lora(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A LoRA's tensors as (what diffusers loads as an adapter, full deltas by diffusers parameter name)."""
    factored = {match[1] for key in state if (match := _FACTOR.match(key))}
    adapter, deltas = {}, {}
    for key, tensor in state.items():
        if is_delta(key) and not (key.endswith(".diff_b") and key.removesuffix(".diff_b") in factored):
            deltas[_original_parameter(key)] = tensor
        else:
            adapter[key] = tensor
    for key in [k for k in adapter if k.endswith(".alpha") and k.startswith(PREFIX) and not _BLOCK_LAYER.match(k)]:
        layer, alpha = key.removesuffix(".alpha"), adapter.pop(key).float().item()
        down = next((f"{layer}.{s}.weight" for s in ("lora_down", "lora_A") if f"{layer}.{s}.weight" in adapter), None)
        if down is None:
            raise ValueError(f"{key!r} is the alpha of no LoRA weight in this file")
        adapter[down] = (adapter[down].float() * (alpha / adapter[down].shape[0])).to(adapter[down].dtype)
    names = diffusers_names(list(deltas))
    return adapter, {names[original]: tensor for original, tensor in deltas.items()}


@dataclass
class LoraFile:
    """A LoRA file as the loaders take it: `adapter` None when diffusers reads the file itself (nothing
    to split off), and the full deltas by diffusers parameter name."""

    path: Path
    adapter: dict[str, torch.Tensor] | None = None
    deltas: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def read(cls, path: str | Path) -> LoraFile:
        path = Path(path)
        with safe_open(str(path), framework="pt") as fh:
            keys = list(fh.keys())
        outside_alphas = any(k.endswith(".alpha") and k.startswith(PREFIX) and not _BLOCK_LAYER.match(k) for k in keys)
        if not outside_alphas and not any(is_delta(key) for key in keys):
            return cls(path)
        adapter, deltas = split_lora(load_file(str(path)))
        return cls(path, adapter, deltas)

    def source(self) -> tuple[tuple, dict]:
        """The arguments naming this LoRA to `load_lora_weights` / `lora_state_dict`: fresh tensors each call,
        since diffusers' Wan converter scales some of those it is given in place (cross-attention, feed-forward)."""
        if self.adapter is None:
            return (str(self.path.parent),), {"weight_name": self.path.name}
        return ({key: tensor.clone() for key, tensor in self.adapter.items()},), {}


def parameter(model: nn.Module, name: str) -> torch.Tensor:
    """A parameter of `model` by its plain name, through peft's wrappers (`blocks.0.attn1.to_q.weight` is
    the wrapped linear's own weight)."""
    path, _, attr = name.rpartition(".")
    try:
        module = model.get_submodule(path) if path else model
        if hasattr(module, "get_base_layer"):
            module = module.get_base_layer()
        tensor = getattr(module, attr)
    except AttributeError:
        tensor = None
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"this LoRA changes {name!r}, which this transformer does not have")
    return tensor


class FullDeltas:
    """The full deltas of the resident LoRAs that have any, and which stack one transformer holds now."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.sources: dict[str, dict[str, torch.Tensor]] = {}  # adapter -> parameter name -> delta
        self._base: dict[str, torch.Tensor] = {}  # parameter name -> its value without deltas
        self._applied: set[str] | None = set()  # parameters holding deltas now; None: unknown
        self.stack: tuple | None = ()  # the (adapter, multiplier) pairs with deltas applied now

    def add(self, adapter: str, deltas: dict[str, torch.Tensor]) -> None:
        """Keep a LoRA's deltas (on the device of what they change), each checked against its parameter."""
        if not deltas:
            return
        kept = {}
        for name, delta in deltas.items():
            target = parameter(self.model, name)
            if tuple(delta.shape) != tuple(target.shape):
                raise ValueError(
                    f"this LoRA's delta for {name!r} has shape {tuple(delta.shape)}; the parameter has "
                    f"{tuple(target.shape)}"
                )
            kept[name] = delta.to(target.device)
        self.sources[adapter] = kept

    @torch.no_grad()
    def drop(self, adapter: str) -> None:
        """Forget a LoRA's deltas, and the base copies of the parameters no remaining LoRA changes: a parameter
        holding deltas now gets its base back first (only the dropped LoRA's deltas can be on it)."""
        if self.sources.pop(adapter, None) is None:
            return
        if self.stack is not None and any(name == adapter for name, _ in self.stack):
            self.stack = None  # what stays of its deltas on shared parameters goes at the next activate
        used = {name for deltas in self.sources.values() for name in deltas}
        for name in [name for name in self._base if name not in used]:
            if self._applied is None or name in self._applied:
                parameter(self.model, name).copy_(self._base[name])
            del self._base[name]
            if self._applied is not None:
                self._applied.discard(name)

    def names(self, stack: list[tuple[str, float]]) -> set[str]:
        """The parameters a stack's deltas change."""
        return {name for adapter, _ in stack for name in self.sources.get(adapter, {})}

    def held_bytes(self, adapter: str) -> int:
        """The memory a LoRA's deltas hold on this transformer's device: the deltas, and the base copy of each
        parameter they change (shared with the other LoRAs changing it)."""
        deltas = self.sources.get(adapter, {})
        return sum(delta.nbytes + parameter(self.model, name).nbytes for name, delta in deltas.items())

    @torch.no_grad()
    def activate(self, stack: list[tuple[str, float]]) -> None:
        """Make every parameter equal its base plus the stack's deltas at their multipliers."""
        stack = tuple((adapter, multiplier) for adapter, multiplier in stack if adapter in self.sources)
        if stack == self.stack:
            return
        wanted = self.names(list(stack))
        previous = set(self._base) if self._applied is None else self._applied
        self.stack, self._applied = None, None  # unknown until every parameter is written
        for name in wanted | previous:
            target = parameter(self.model, name)
            if name not in self._base:
                self._base[name] = target.detach().clone()
            value = self._base[name].to(target.device, torch.float32)
            for adapter, multiplier in stack:
                if name in self.sources[adapter]:
                    value = value + multiplier * self.sources[adapter][name].to(target.device, torch.float32)
            target.copy_(value.to(target.dtype))
        self.stack, self._applied = stack, wanted
