"""A worker's cold and warm start with WAN_COMPILE_CACHE, and the draft preset end to end, on one card.

Each phase is a fresh Python process, as a restarted worker is: it opens the compile cache, loads the
full-size random-weight 14B (from the page cache after the first), warms up exact and fast mode for the
default size as WAN_WARMUP does, and reports the seconds from process start to ready. The first phase
starts with an empty cache folder and leaves its compile work there; the second finds it. The warm phase
then renders the draft preset's job (a rank-64 step-distill LoRA in the ComfyUI/kohya format, 4 steps,
guidance 1, the distilled timesteps) exactly and in fast mode, MP4 encode included, and
compares the fast frames with the exact ones.

    python bench/cold_start.py                          # both phases, the warm one rendering draft exact, fast
    python bench/cold_start.py --only-warm exact,exact  # one phase without fast mode: draft exact twice
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

START = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WORK = Path("/tmp/wan14b")
OUT = Path(os.environ.get("OUT", "."))
SIZE = (1024, 1024, 41)


def phase(name: str, cache: Path, draft: list[str]) -> dict:
    import torch
    from torch._dynamo.utils import counters

    from bench.common import psnr
    from workers.pipeline.compile_cache import CompileCache
    from workers.pipeline.params import resolve_prompt
    from workers.pipeline.residency import LoraSpec
    from workers.pipeline.runtime import WanRuntime
    from workers.pipeline.video import write_mp4

    row = {"phase": name, "imports_s": round(time.perf_counter() - START, 1)}
    compile_cache = CompileCache(cache)
    row["artifacts_load_s"] = round(compile_cache.open(), 1)
    runtime = WanRuntime(
        str(WORK / "model"), device="cuda", exact_compile=True, fast_mode="fast" in draft or not draft
    ).load()
    row["loaded_s"] = round(time.perf_counter() - START, 1)
    row["warm_up_s"] = round(runtime.warm_up([SIZE]), 1)
    row["ready_s"] = round(time.perf_counter() - START, 1)
    row["graphs"] = counters["stats"]["unique_graphs"]
    row["fxgraph_cache"] = {k: v for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}
    row["fast_attention"] = runtime.fast.attention if runtime.fast else None
    if not draft:
        row["artifacts_bytes"] = compile_cache.save()
        return row
    width, height, frames = SIZE
    params = resolve_prompt(
        {
            "prompt": "a red fox running through snow",
            "width": width,
            "height": height,
            "num_frames": frames,
            "sample_steps": 4,
            "guidance_scale": 1.0,
            "seed": 7,
        },
        index=0,
    )
    distill = LoraSpec(str(WORK / "distill_r64.safetensors"), sha256="d" * 64, multiplier=1.0)
    outputs = {}
    for speed in draft:
        torch.cuda.synchronize()
        begin = time.perf_counter()
        result = runtime.render(params, loras=[distill], scheduler="distill", speed=speed)
        write_mp4(result.frames, OUT / f"draft_{speed}.mp4", fps=16)
        seconds = time.perf_counter() - begin
        row.setdefault(f"draft_{speed}_s", []).append(round(seconds, 1))
        row[f"draft_{speed}_timings"] = {k: round(v, 2) for k, v in result.timings.items()}
        row[f"draft_{speed}_attention"] = result.attention
        outputs[speed] = result.frames
    if {"exact", "fast"} <= outputs.keys():
        row["draft_fast_vs_exact_psnr_db"] = round(psnr(outputs["fast"], outputs["exact"]), 1)
    return row


def main():
    from bench.common import ensure_wan14b
    from workers.pipeline.checkpoints import write_kohya_lora
    from workers.pipeline.shapes import WAN_14B_TRANSFORMER, WanShape

    begin = time.perf_counter()
    ensure_wan14b(WORK / "model")
    lora = WORK / "distill_r64.safetensors"
    if not lora.exists():
        write_kohya_lora(
            lora, shape=WanShape.of(WAN_14B_TRANSFORMER), rank=64, alpha=64, seed=5, scale=0.01, device="cuda"
        )
    print(f"model and LoRA ready in {time.perf_counter() - begin:.0f}s", flush=True)
    cache = WORK / "compile-cache"
    shutil.rmtree(cache, ignore_errors=True)
    rows = []
    phases = [("cold (empty cache)", ""), ("warm (cache from the cold run)", "exact,fast")]
    if len(sys.argv) > 2 and sys.argv[1] == "--only-warm":
        phases = [("draft", sys.argv[2])]
    for name, draft in phases:
        done = subprocess.run(
            [sys.executable, __file__, "--phase", name, str(cache), draft], capture_output=True, text=True
        )
        if done.returncode:
            print(done.stderr[-4000:], flush=True)
            break
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
        (OUT / "cold_start.json").write_text(json.dumps(rows, indent=1))
    print("\n| phase | loaded s | warm-up s | ready s (from process start) | draft exact s | draft fast s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['phase']} | {row['loaded_s']} | {row['warm_up_s']} | {row['ready_s']} | "
            f"{row.get('draft_exact_s', '-')} | {row.get('draft_fast_s', '-')} |"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--phase":
        print(json.dumps(phase(sys.argv[2], Path(sys.argv[3]), [s for s in sys.argv[4].split(",") if s])), flush=True)
    else:
        main()
