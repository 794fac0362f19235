"""Exact mode's LoRAs in a form compiled blocks keep: the job's stack as one fixed adapter.

peft runs every active adapter as its own `B(A(x)) * scaling`, and torch.compile bakes the set of
active adapters and each scaling into the graph, so a new LoRA or multiplier would recompile the
blocks (about 50 s on the 14B). `LoraStack` gives the transformer one more adapter, "stack", on
every linear of its blocks: its A is the job's A matrices stacked row-wise, its B the matching B
matrices side by side, each times its peft scaling, zero-padded to a rank bucket. Every job runs
that same adapter at scaling 1.0, so a switch only copies tensors:

    W x + [s1 B1 | s2 B2 | 0] [A1; A2; 0] x  =  W x + s1 B1 A1 x + s2 B2 A2 x

the sum peft computes adapter by adapter, up to bf16 rounding. A job without LoRAs runs the
zeroed stack, which adds exactly zero.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

STACK = "stack"
BUCKETS = (32, 64, 128, 256, 512)  # stack ranks; each is one compiled graph per video size


def bucket(rank: int) -> int:
    return next((b for b in BUCKETS if rank <= b), -(-rank // BUCKETS[-1]) * BUCKETS[-1])


def _base(module: nn.Module) -> nn.Module:
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def block_linears(model: nn.Module) -> set[str]:
    """The transformer blocks' linears, by module name (peft's wrappers counted as what they wrap)."""
    return {name for name, module in model.named_modules()
            if name.startswith("blocks.") and isinstance(_base(module), nn.Linear)
            and not name.endswith(".base_layer") and ".lora_" not in name}


class LoraStack:
    """The "stack" adapter of one transformer and what it holds now."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.targets = block_linears(model)
        self.rank = 0
        self.stack: tuple | None = None  # the (adapter, multiplier) pairs filled in; None: unknown
        self._filled: set[str] | None = set()  # layers holding non-zero values; None: unknown
        self._build(BUCKETS[0])

    def _build(self, rank: int) -> None:
        from peft import LoraConfig

        if self.rank:
            self.model.delete_adapters(STACK)
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=sorted(self.targets), lora_bias=True,
                            init_lora_weights=False)
        with warnings.catch_warnings():  # "multiple adapters in the model": as intended
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            self.model.add_adapter(config, adapter_name=STACK)
        with torch.no_grad():
            for name in self.targets:
                layer = self.model.get_submodule(name)
                for part in (layer.lora_A[STACK], layer.lora_B[STACK]):  # in the dtype peft gives adapters
                    part.to(_base(layer).weight.dtype).requires_grad_(False)
                    for tensor in part.parameters():
                        tensor.zero_()
        self.rank, self._filled, self.stack = rank, set(), ()

    def stackable(self, adapters: list[str]) -> bool:
        """Whether these adapters are plain LoRAs on linears (DoRA or a conv LoRA run as peft adapters)."""
        for module in self.model.modules():
            for adapter in adapters:
                if adapter in getattr(module, "lora_A", {}):
                    if not isinstance(_base(module), nn.Linear) or adapter in getattr(module, "lora_variant", {}):
                        return False
        return True

    @torch.no_grad()
    def activate(self, stack: list[tuple[str, float]]) -> None:
        """Fill the stack adapter with `stack` and make it the only active adapter."""
        stack = tuple(stack)
        if stack != self.stack:
            self.model.set_adapters([a for a, _ in stack] or [STACK], [m for _, m in stack] or [1.0])
            parts = self._parts([a for a, _ in stack])  # peft's scalings are now the job's
            rank = max((sum(layer.r[a] for a in adapters) for layer, adapters in parts.values()), default=0)
            if bucket(rank) > self.rank or not parts.keys() <= self.targets:  # grow only: fewer graphs
                self.targets |= parts.keys()
                self._build(max(bucket(rank), self.rank))
            previous, self.stack, self._filled = self._filled, None, None  # unknown until filled
            for name in self.targets:
                if name in parts or previous is None or name in previous:
                    self._fill(self.model.get_submodule(name), *parts.get(name, (None, [])))
            self._filled, self.stack = set(parts), stack
        self.model.enable_lora()
        self.model.set_adapters([STACK], [1.0])

    def _parts(self, adapters: list[str]) -> dict[str, tuple[nn.Module, list[str]]]:
        parts = {}
        for name, module in self.model.named_modules():
            mine = [a for a in adapters if a in getattr(module, "lora_A", {})]
            if mine:
                parts[name] = (module, mine)
        return parts

    def _fill(self, layer: nn.Module, source: nn.Module | None, adapters: list[str]) -> None:
        down, up = layer.lora_A[STACK], layer.lora_B[STACK]
        a = torch.zeros_like(down.weight, dtype=torch.float32)
        b = torch.zeros_like(up.weight, dtype=torch.float32)
        bias = torch.zeros_like(up.bias, dtype=torch.float32)
        at = 0
        for adapter in adapters:
            rank, scaling = source.r[adapter], source.scaling[adapter]
            a[at:at + rank] = source.lora_A[adapter].weight.float()
            b[:, at:at + rank] = source.lora_B[adapter].weight.float() * scaling
            if source.lora_B[adapter].bias is not None:  # `diff_b` keys: peft's lora bias
                bias += source.lora_B[adapter].bias.float() * scaling
            at += rank
        down.weight.copy_(a)
        up.weight.copy_(b)
        up.bias.copy_(bias)
