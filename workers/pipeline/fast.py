"""Fast mode: an fp8 copy of the transformer with the job's LoRA stack merged in.

Opt-in per job (`"speed": "fast"`). The copy holds every linear of the transformer blocks in fp8
(torchao's rowwise `Float8DynamicActivationFloat8WeightConfig`: fp8 weights, activations cast
to fp8 per row on the fly, `torch._scaled_mm` on Hopper), runs cuDNN attention and, where asked,
compiles its repeated blocks once. LoRAs are merged rather than run beside the weights: when a
job's stack differs from the last one, each affected weight is rebuilt from the exact model's
bf16 base plus the multiplied `B @ A` deltas and re-quantized in place, so the compiled blocks
never recompile when the LoRA or its multiplier changes. Full deltas (`diff`, `diff_b`) reach the
copy through the exact model, which holds them in its own parameters; layers outside the blocks
stay in the runtime's dtype and take their values as they are.

This is lossy (fp8 rounding of weights and activations); `bench/compare.py` measures how far
it lands from exact mode (flow per step, decoded frames) and `bench/forwards.py` per forward. On
the CPU the same rowwise fp8 rounding is applied to the weights (computed in the runtime's dtype),
since torchao's fp8 kernels need a CUDA card.
"""

from __future__ import annotations

import logging
import time

import torch
from diffusers import WanTransformer3DModel
from torch import nn

from .attention import BF16_ATTENTION, FP8_ATTENTION, use_fp8_self_attention
from .lora_deltas import parameter
from .lora_stack import Layers

log = logging.getLogger(__name__)

FP8 = torch.float8_e4m3fn
ATTENTION = "_native_cudnn"  # diffusers' name for torch's cuDNN SDPA kernel


def fp8_available(device: str) -> bool:
    """fp8 matmuls need an Ada or Hopper card (compute capability 8.9+); the CPU emulates them (tests)."""
    if not device.startswith("cuda"):
        return True
    return torch.cuda.get_device_capability(torch.device(device)) >= (8, 9)


def _is_block_linear(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Linear) and name.startswith("blocks.")


def fp8_rowwise_round(weight: torch.Tensor) -> torch.Tensor:
    """The weight after a round trip through fp8 with one scale per output row (CPU emulation)."""
    scale = weight.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / torch.finfo(FP8).max
    return ((weight.float() / scale).to(FP8).float() * scale).to(weight.dtype)


class FastTransformer:
    """The fp8 transformer a pipeline swaps in for fast jobs."""

    def __init__(
        self, model_path: str, *, device: str, dtype: torch.dtype, compile: bool = True, attention: str = "bf16"
    ):
        start = time.perf_counter()
        self.cuda = device.startswith("cuda")
        kwargs = {"device_map": "cuda"} if self.cuda else {}
        model = WanTransformer3DModel.from_pretrained(model_path, subfolder="transformer", dtype=dtype, **kwargs)
        self.model = model.to(device).eval().requires_grad_(False)
        if self.cuda:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

            self._config = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
            self._quantize_ = quantize_
            quantize_(self.model, self._config, filter_fn=_is_block_linear)
            self.model.set_attention_backend(ATTENTION)
            if attention == "fp8":
                use_fp8_self_attention(self.model)
            if compile:  # one graph per video size, compiled on first use (about 100 s on an H200)
                self.model.compile_repeated_blocks(fullgraph=True, dynamic=False)
        else:
            with torch.no_grad():
                for _, linear in self._linears():
                    linear.weight.copy_(fp8_rowwise_round(linear.weight))
            if attention == "fp8":  # the op's reference implementation (tests)
                use_fp8_self_attention(self.model)
        self.attention = FP8_ATTENTION if attention == "fp8" else BF16_ATTENTION
        self.stack: tuple | None = ()  # the (adapter, multiplier) pairs merged in now; None: unknown
        self._touched: set[str] | None = set()  # linears and parameters carrying a LoRA's delta; None: unknown
        self.build_seconds = time.perf_counter() - start
        log.info("fast-mode transformer ready in %.1fs", self.build_seconds)

    def _linears(self):
        return ((name, module) for name, module in self.model.named_modules() if _is_block_linear(module, name))

    @torch.no_grad()
    def merge(
        self, exact: nn.Module, stack: list[tuple[str, float]], layers: Layers, deltas: set[str] = frozenset()
    ) -> float:
        """Make the fp8 weights equal base + the stack's deltas, reading base weights from `exact`
        (the pipeline's transformer, its LoRAs made active first) and the stack's factors from
        `layers`. `deltas` names the parameters the stack's full deltas change (`lora_deltas.py`):
        `exact` holds them with the deltas applied, so they are read from there (a linear's weight
        and bias as its base; any other parameter copied). Returns the seconds it took; nothing
        happens when the stack is the one merged already."""
        stack = tuple(stack)
        if stack == self.stack:
            return 0.0
        start = time.perf_counter()
        previous, self.stack = self._touched, None  # unknown until this merge completes
        try:
            self._touched = self._merge_layers(exact, layers, set(deltas), previous)
        except BaseException:
            self._touched = None  # some layers half-way: the next merge rewrites every one
            raise
        self.stack = stack
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def _merge_layers(self, exact: nn.Module, layers: Layers, deltas: set[str], previous: set[str] | None) -> set[str]:
        """Rebuild what the stack changes now or changed before; returns what it changes now (linears
        by module name, other parameters by name)."""
        touched, linear_parameters = set(), set()
        for name, linear in self.model.named_modules():
            if not isinstance(linear, nn.Linear):
                continue
            linear_parameters |= {f"{name}.weight", f"{name}.bias"}
            parts = layers.get(name, [])
            changed = bool(parts) or f"{name}.weight" in deltas or f"{name}.bias" in deltas
            if not changed and previous is not None and name not in previous:
                continue  # no LoRA before or now: its weight is already the base
            source = exact.get_submodule(name)
            base = source.get_base_layer() if hasattr(source, "get_base_layer") else source
            weight = base.weight.detach().to(torch.float32, copy=True)
            bias = None if base.bias is None else base.bias.detach().to(torch.float32, copy=True)
            for factors, multiplier in parts:
                scale = factors.scaling(multiplier)
                weight += scale * (factors.up.float() @ factors.down.float())
                if factors.bias is not None and bias is not None:
                    bias += scale * factors.bias.float()
            if changed:
                touched.add(name)
            if _is_block_linear(linear, name):
                self._store(linear, weight.to(base.weight.dtype))
            else:  # outside the blocks: kept in the runtime's dtype
                linear.weight.copy_(weight.to(linear.weight.dtype))
            if bias is not None:
                linear.bias.copy_(bias.to(linear.bias.dtype))
        others = {name for name, _ in self.model.named_parameters()} - linear_parameters
        for name in others if previous is None else (deltas | previous) & others:
            self.model.get_parameter(name).copy_(parameter(exact, name))
        return touched | (deltas & others)

    def _store(self, linear: nn.Linear, weight: torch.Tensor) -> None:
        """Re-quantize one linear in place (same tensors, so compiled code stays valid)."""
        if not self.cuda:
            linear.weight.copy_(fp8_rowwise_round(weight))
            return
        fresh = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        fresh.weight = nn.Parameter(weight, requires_grad=False)
        self._quantize_(fresh, self._config)
        if hasattr(linear.weight, "qdata"):
            linear.weight.qdata.copy_(fresh.weight.qdata)
            linear.weight.scale.copy_(fresh.weight.scale)
        else:  # torchao leaves shapes its fp8 kernels cannot take in bf16
            linear.weight.copy_(fresh.weight)
