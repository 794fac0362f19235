"""Opt-in speed and memory modes of the worker runtime against exact mode, on one card.

Step caching (FirstBlockCache) at two thresholds: seconds per 25-step video and PSNR of the decoded
frames against exact mode. Low-memory mode (models visit the GPU in turn, tiled VAE decode): peak GPU
memory and the time it costs, on the default request size.

    python bench/modes.py
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ensure_wan14b, psnr  # noqa: E402
from workers.pipeline.params import resolve_prompt  # noqa: E402
from workers.pipeline.runtime import WanRuntime  # noqa: E402

WORK = Path("/tmp/wan14b")
OUT = Path(os.environ.get("OUT", "."))


def timed_render(runtime, params, **options):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = runtime.render(params, **options)
    torch.cuda.synchronize()
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30


def main():
    model = ensure_wan14b(WORK / "model")
    out = {"device": torch.cuda.get_device_name(), "caching": [], "memory": []}

    runtime = WanRuntime(model, device="cuda").load()
    params = resolve_prompt(
        {
            "prompt": "a person walking on a beach at sunset",
            "width": 832,
            "height": 480,
            "num_frames": 41,
            "sample_steps": 25,
        },
        index=0,
    )
    exact, exact_s, _ = timed_render(runtime, params)
    out["caching"].append({"mode": "exact", "shape": "832x480x41", "steps": 25, "s": round(exact_s, 1)})
    for threshold in (0.05, 0.1):
        cached, seconds, _ = timed_render(runtime, params, step_cache=threshold)
        out["caching"].append(
            {
                "mode": f"first-block cache {threshold}",
                "shape": "832x480x41",
                "steps": 25,
                "s": round(seconds, 1),
                "speedup": round(exact_s / seconds, 2),
                "psnr_vs_exact_db": round(psnr(cached.frames, exact.frames), 2),
            }
        )
        print(json.dumps(out["caching"][-1]), flush=True)

    default = resolve_prompt({"prompt": "a person", "sample_steps": 2}, index=0)  # 1024x1024x41
    _, seconds, peak = timed_render(runtime, default)
    out["memory"].append({"mode": "resident", "steps": 2, "s": round(seconds, 1), "peak_gib": round(peak, 1)})
    del runtime
    gc.collect()
    torch.cuda.empty_cache()
    start = time.perf_counter()
    low = WanRuntime(model, device="cuda", low_memory=True).load()
    load_s = time.perf_counter() - start
    for attempt in ("first", "second"):
        _, seconds, peak = timed_render(low, default)
        out["memory"].append(
            {
                "mode": f"low memory ({attempt} job)",
                "steps": 2,
                "s": round(seconds, 1),
                "peak_gib": round(peak, 1),
                "load_s": round(load_s, 1),
            }
        )
    (OUT / "modes.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
