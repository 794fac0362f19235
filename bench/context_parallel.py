"""One job across N GPUs (WAN_CP_DEVICES: Ulysses context parallelism) against one GPU, same host.

Each `--gpus` value runs in turn in this process (a process holds one torch.distributed group at a
time): a 1-GPU runtime first, then one split across 2 and 4 GPUs, the same 2-step jobs on each.
Seconds per step, the speed-up against one GPU, and how far the frames are from one GPU's.

    python bench/context_parallel.py --gpus 1,2,4 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ensure_wan14b, psnr  # noqa: E402
from workers.pipeline.checkpoints import write_aitoolkit_lora  # noqa: E402
from workers.pipeline.config import RuntimeConfig  # noqa: E402
from workers.pipeline.parallel import build_runtime  # noqa: E402
from workers.pipeline.params import resolve_prompt  # noqa: E402
from workers.pipeline.runtime import LoraSpec  # noqa: E402
from workers.pipeline.shapes import WAN_14B_TRANSFORMER, WanShape  # noqa: E402

WORK = Path("/tmp/wan14b")
SIZES = ("1024x1024x41", "832x480x81")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", default="1,2,4")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    model = ensure_wan14b(WORK / "model", device="cuda:0")
    lora = write_aitoolkit_lora(WORK / "loras/a/a.safetensors", shape=WanShape.of(WAN_14B_TRANSFORMER), rank=32)
    spec = LoraSpec(str(lora), sha256="a" * 64, multiplier=0.8, software_version="0.9.4")
    out = {
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "steps": args.steps,
        "runs": [],
    }
    baseline = {}
    for count in (int(n) for n in args.gpus.split(",")):
        start = time.perf_counter()
        runtime = build_runtime(
            RuntimeConfig.resolve(
                model, device="cuda:0", fast_mode=False, cp_devices=[f"cuda:{i}" for i in range(count)]
            )
        ).load()
        load_s = time.perf_counter() - start
        for size in SIZES:
            width, height, frames = (int(v) for v in size.split("x"))
            params = resolve_prompt(
                {
                    "prompt": "sks a person on a beach",
                    "width": width,
                    "height": height,
                    "num_frames": frames,
                    "sample_steps": args.steps,
                },
                index=0,
            )
            marks = []
            result = runtime.render(params, loras=[spec], on_step=lambda d, t: marks.append(time.perf_counter()))
            per_step = (marks[-1] - marks[0]) / (len(marks) - 1)
            baseline.setdefault(size, (per_step, result.frames))
            one_step, one_frames = baseline[size]
            row = {
                "gpus": count,
                "shape": size,
                "load_s": round(load_s, 1),
                "s_per_step": round(per_step, 3),
                "speedup_per_step": round(one_step / per_step, 2),
                "max_abs_diff_vs_first": int(np.abs(result.frames.astype(int) - one_frames).max()),
                "psnr_vs_first": round(psnr(result.frames, one_frames), 1),
                "peak_gib_rank0": round(torch.cuda.max_memory_allocated(0) / 2**30, 1),
            }
            out["runs"].append(row)
            print(json.dumps(row), flush=True)
        runtime.close()
        del runtime
        torch.cuda.empty_cache()
    Path(os.environ.get("OUT", ".")).joinpath("context_parallel.json").write_text(json.dumps(out, indent=1))
    print("\ngpus | shape | s/step | speed-up | max diff | PSNR")
    for r in out["runs"]:
        print(
            f"{r['gpus']} | {r['shape']} | {r['s_per_step']} | {r['speedup_per_step']} | "
            f"{r['max_abs_diff_vs_first']} | {r['psnr_vs_first']}"
        )


if __name__ == "__main__":
    main()
