"""LoRA factors per layer, and exact mode's LoRAs in a form compiled blocks keep.

peft runs every active adapter as its own `B(A(x)) * scaling`, and torch.compile bakes the set of
loaded adapters, the active ones and each scaling into the graph: a new LoRA or multiplier would
recompile the blocks (about 50 s on the 14B). `LoraStack` keeps the transformer's structure fixed
instead. A LoRA is loaded by diffusers as usual (its key conversion, alpha and rank), then its
factors are taken out of the model and kept here, and the model holds one adapter only, "stack",
on every linear of its blocks: its A is the job's A matrices stacked row-wise, its B the matching
B matrices side by side, each times its peft scaling, zero-padded to a rank bucket. Every job
runs that same adapter at scaling 1.0, so a switch only copies tensors:

    W x + [s1 B1 | s2 B2 | 0] [A1; A2; 0] x  =  W x + s1 B1 A1 x + s2 B2 A2 x

the sum peft computes adapter by adapter, up to rounding. A job without LoRAs runs the zeroed
stack, which adds exactly zero.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

STACK = "stack"
BUCKETS = (32, 64, 128, 256, 512)  # stack ranks; each is one compiled graph per video size


@dataclass(frozen=True)
class Factors:
    """One LoRA's factors on one linear, as peft loaded them."""

    down: torch.Tensor  # A: (rank, in)
    up: torch.Tensor  # B: (out, rank)
    bias: torch.Tensor | None  # `diff_b` keys: peft's lora bias
    alpha: float
    rank: int
    rslora: bool = False

    def scaling(self, multiplier: float) -> float:
        """peft's `set_scale`: the multiplier times alpha over the rank (or its root, rsLoRA)."""
        return multiplier * self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    @classmethod
    def of(cls, layer: nn.Module, adapter: str) -> Factors:
        up = layer.lora_B[adapter]
        return cls(
            layer.lora_A[adapter].weight.detach(),
            up.weight.detach(),
            None if up.bias is None else up.bias.detach(),
            layer.lora_alpha[adapter],
            layer.r[adapter],
            layer.use_rslora.get(adapter, False),
        )


Layers = dict[str, list[tuple[Factors, float]]]  # module name -> (factors, multiplier) of each LoRA of a stack


def adapter_factors(model: nn.Module, adapter: str) -> dict[str, Factors]:
    """A peft adapter's factors on each layer of `model` that holds it, by module name."""
    return {
        name: Factors.of(module, adapter)
        for name, module in model.named_modules()
        if adapter in getattr(module, "lora_A", {})
    }


def stacked(sources: dict[str, dict[str, Factors]], stack: list[tuple[str, float]]) -> Layers:
    """A stack's factors on each layer, from each adapter's factors by module name."""
    layers: Layers = {}
    for adapter, multiplier in stack:
        for name, factors in sources[adapter].items():
            layers.setdefault(name, []).append((factors, multiplier))
    return layers


def peft_layers(model: nn.Module, stack: list[tuple[str, float]]) -> Layers:
    """A stack's factors on each layer, read from peft adapters loaded in `model`."""
    return stacked({adapter: adapter_factors(model, adapter) for adapter, _ in stack}, stack)


def bucket(rank: int) -> int:
    return next((b for b in BUCKETS if rank <= b), -(-rank // BUCKETS[-1]) * BUCKETS[-1])


def _base(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _plain_lora(layer: nn.Module, adapter: str) -> bool:
    """The adapter is a plain LoRA (no DoRA or other variant) on a linear layer: what the stack can hold."""
    return isinstance(_base(layer), nn.Linear) and adapter not in getattr(layer, "lora_variant", {})


def block_linears(model: nn.Module) -> set[str]:
    """The transformer blocks' linears, by module name (peft's wrappers counted as what they wrap)."""
    return {
        name
        for name, module in model.named_modules()
        if name.startswith("blocks.")
        and isinstance(_base(module), nn.Linear)
        and not name.endswith(".base_layer")
        and ".lora_" not in name
    }


class LoraStack:
    """The LoRAs taken out of one transformer, and its "stack" adapter with what it holds now."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.targets: set[str] = set()
        self.rank = 0
        self.sources: dict[str, dict[str, Factors]] = {}  # adapter -> module name -> factors
        self.stack: tuple | None = None  # the (adapter, multiplier) pairs filled in; None: unknown
        self._filled: set[str] | None = set()  # layers holding non-zero values; None: unknown
        self._build(BUCKETS[0], block_linears(model))

    def take(self, adapter: str) -> None:
        """Move a freshly loaded peft adapter's factors out of the model into `sources`."""
        factors = adapter_factors(self.model, adapter)
        unfit = [name for name in factors if not _plain_lora(self.model.get_submodule(name), adapter)]
        self.model.delete_adapters(adapter)
        if unfit:
            raise ValueError(f"{unfit[0]}: only plain LoRAs on linear layers run with WAN_EXACT_COMPILE")
        self.sources[adapter] = factors

    def drop(self, adapter: str) -> None:
        self.sources.pop(adapter, None)

    def layers(self, stack: list[tuple[str, float]]) -> Layers:
        return stacked(self.sources, stack)

    def _build(self, rank: int, targets: set[str]) -> None:
        from peft import LoraConfig

        self.rank, self.stack, self._filled = 0, None, None  # unknown until built and zeroed
        if STACK in getattr(self.model, "peft_config", {}):
            self.model.delete_adapters(STACK)
        config = LoraConfig(
            r=rank, lora_alpha=rank, target_modules=sorted(targets), lora_bias=True, init_lora_weights=False
        )
        with warnings.catch_warnings():  # "multiple adapters in the model": as intended
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            self.model.add_adapter(config, adapter_name=STACK)
        with torch.no_grad():
            for name in targets:
                layer = self.model.get_submodule(name)
                for part in (layer.lora_A[STACK], layer.lora_B[STACK]):  # in the dtype peft gives adapters
                    part.to(_base(layer).weight.dtype).requires_grad_(False)
                    for tensor in part.parameters():
                        tensor.zero_()
        self.rank, self.targets, self._filled, self.stack = rank, targets, set(), ()

    @torch.no_grad()
    def activate(self, stack: list[tuple[str, float]]) -> None:
        """Fill the stack adapter with `stack` (adapters taken before) and make it the active one."""
        stack = tuple(stack)
        if stack != self.stack:
            layers = self.layers(list(stack))
            rank = max((sum(factors.rank for factors, _ in parts) for parts in layers.values()), default=0)
            if not self.rank or bucket(rank) > self.rank or not layers.keys() <= self.targets:
                self._build(max(bucket(rank), self.rank), self.targets | layers.keys())  # grows only: fewer graphs
            previous, self.stack, self._filled = self._filled, None, None  # unknown until filled
            for name in self.targets:
                if name in layers or previous is None or name in previous:
                    self._fill(self.model.get_submodule(name), layers.get(name, []))
            self._filled, self.stack = set(layers), stack
        self.model.enable_lora()
        self.model.set_adapters([STACK], [1.0])

    @staticmethod
    def _fill(layer: nn.Module, parts: list[tuple[Factors, float]]) -> None:
        down, up = layer.lora_A[STACK], layer.lora_B[STACK]
        a = torch.zeros_like(down.weight, dtype=torch.float32)
        b = torch.zeros_like(up.weight, dtype=torch.float32)
        bias = torch.zeros_like(up.bias, dtype=torch.float32)
        at = 0
        for factors, multiplier in parts:
            scaling = factors.scaling(multiplier)
            a[at : at + factors.rank] = factors.down.float()
            b[:, at : at + factors.rank] = factors.up.float() * scaling
            if factors.bias is not None:
                bias += factors.bias.float() * scaling
            at += factors.rank
        down.weight.copy_(a)
        up.weight.copy_(b)
        up.bias.copy_(bias)
