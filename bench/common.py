"""Shared by the GPU benchmarks: the random-weight 14B checkpoint they all render, FLOP counts, CUDA timing,
frame PSNR."""

from __future__ import annotations

import gc
import time
from pathlib import Path

import numpy as np
import torch

from workers.pipeline.checkpoints import write_random_wan
from workers.pipeline.runtime import TEXT_TOKENS
from workers.pipeline.shapes import UMT5_XXL, WAN_14B_TRANSFORMER, WanShape

_SHAPE = WanShape.of(WAN_14B_TRANSFORMER)
D, FFN, L, TEXT = _SHAPE.dim, _SHAPE.ffn_dim, _SHAPE.num_layers, TEXT_TOKENS


def forward_flops(tokens: int) -> float:
    """FLOPs of one 14B transformer forward over `tokens` video tokens (REFERENCE section 6, plus text)."""
    linear = 2 * tokens * L * (6 * D * D + 2 * D * FFN) + 2 * TEXT * L * 2 * D * D
    return linear + 4 * tokens * tokens * D * L + 4 * tokens * TEXT * D * L


def matmul_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    """The card's measured bf16 matmul peak (median of `reps` n x n x n products after a warm-up)."""
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    x @ x
    times = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        x @ x
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end) / 1000)
    return round(2 * n**3 / sorted(times)[reps // 2] / 1e12)


def timed(fn, *, reps: int = 2):
    """(median seconds of `reps` calls after a first one, the first call's seconds, the last output).

    The first call is timed on the host clock since it may compile; the rest on CUDA events. With
    reps=0 the first call's seconds stand in for the median.
    """
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        times.append(begin.elapsed_time(end) / 1000)
    return (sorted(times)[len(times) // 2] if times else first), first, out


def ensure_wan14b(folder: Path, *, device: str = "cuda") -> str:
    """A full-size random-weight Wan 2.1 14B diffusers folder, written once per machine."""
    if not (folder / "model_index.json").exists():
        write_random_wan(
            folder,
            transformer_config=WAN_14B_TRANSFORMER,
            text_encoder_config=UMT5_XXL,
            vae_config={},
            dtype=torch.bfloat16,
            device=device,
        )
        gc.collect()
        torch.cuda.empty_cache()
    return str(folder)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255**2 / mse))
