"""What a runtime is allowed to do, decided once: `RuntimeConfig.resolve` applies every rule that
ties the modes together, so the rest of the pipeline reads flags and never re-derives them.

The rules:
- Splitting one job across GPUs (`cp_devices`) excludes a CFG device and low-memory mode, and runs
  neither fast mode nor compiled blocks (neither is split across ranks); each rank's device is its
  entry of `cp_devices`.
- Fast mode needs an fp8-capable card (the CPU emulates it for tests) and room for its fp8 copy,
  so low-memory mode turns it off. Its self-attention runs in 8 bits where the card and the cuDNN
  frontend allow (`fast_attention` "auto"; "fp8" forces it, emulated on a CPU; "bf16" keeps bf16).
- The stack adapter (`lora_stack`) comes with `exact_compile`; low-memory mode turns both off.
  Blocks are compiled on CUDA only: on a CPU the stack adapter runs uncompiled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import fp8_attention_missing
from .fast import fp8_available


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(frozen=True)
class RuntimeConfig:
    model_path: str
    device: str
    dtype: torch.dtype
    lora_budget_bytes: int = 8 * 2**30
    low_memory: bool = False  # models visit the GPU in turn, the VAE decodes in tiles
    cfg_device: str | None = None  # a second device for every step's unconditional pass
    fast_mode: bool = False  # fast jobs get the fp8 copy; without it they render exactly
    fast_compile: bool = False
    fast_attention: str = "bf16"  # fast mode's self-attention: "fp8" or "bf16"
    lora_stack: bool = False  # exact jobs take their LoRAs through one stack adapter
    compile_exact: bool = False  # ... and run compiled blocks
    cp_devices: tuple[str, ...] = ()  # one job across these devices; () runs alone
    cp_rank: int = 0

    @classmethod
    def resolve(
        cls,
        model_path: str,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        lora_budget_bytes: int = 8 * 2**30,
        low_memory: bool = False,
        cfg_device: str | None = None,
        fast_mode: bool = True,
        fast_compile: bool = True,
        fast_attention: str = "auto",
        exact_compile: bool = False,
        cp_devices: list[str] | tuple[str, ...] = (),
        cp_rank: int = 0,
    ) -> RuntimeConfig:
        cp_devices = tuple(cp_devices) if len(cp_devices) > 1 else ()
        if cp_devices:
            if cfg_device or low_memory:
                raise ValueError("a job split across GPUs (WAN_CP_DEVICES) excludes WAN_CFG_DEVICE and WAN_LOW_MEMORY")
            device = cp_devices[cp_rank]
            fast_mode = exact_compile = False
        device = device or default_device()
        lora_stack = exact_compile and not low_memory
        if fast_attention not in ("auto", "fp8", "bf16"):
            raise ValueError(f"fast attention must be auto, fp8 or bf16, not {fast_attention!r}")
        if fast_attention != "bf16" and device.startswith("cuda"):
            fast_attention = "bf16" if fp8_attention_missing(device) else "fp8"
        elif fast_attention == "auto":
            fast_attention = "bf16"  # a CPU emulates 8-bit attention only when asked to ("fp8")
        return cls(
            model_path=model_path,
            device=device,
            dtype=dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32),
            lora_budget_bytes=lora_budget_bytes,
            low_memory=low_memory,
            cfg_device=cfg_device,
            fast_mode=fast_mode and not low_memory and fp8_available(device),
            fast_compile=fast_compile,
            fast_attention=fast_attention,
            lora_stack=lora_stack,
            compile_exact=lora_stack and device.startswith("cuda"),
            cp_devices=cp_devices,
            cp_rank=cp_rank,
        )

    @property
    def on_cuda(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def split(self) -> bool:
        return bool(self.cp_devices)

    @property
    def decodes(self) -> bool:
        """Rank 0 decodes the video; the other ranks of a split job stop at the latents."""
        return self.cp_rank == 0

    def warm_up_speeds(self) -> list[str]:
        """The speeds whose compile work a warm-up can do before the first job."""
        return (["exact"] if self.compile_exact else []) + (["fast"] if self.fast_mode else [])

    def for_rank(self, rank: int) -> RuntimeConfig:
        return RuntimeConfig.resolve(
            self.model_path,
            dtype=self.dtype,
            lora_budget_bytes=self.lora_budget_bytes,
            cp_devices=self.cp_devices,
            cp_rank=rank,
        )
