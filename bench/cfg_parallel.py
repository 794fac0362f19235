"""One job across two GPUs (CFG in parallel) against one GPU, same process, same card type.

python bench/cfg_parallel.py --steps 3                  # peft's adapters, uncompiled
python bench/cfg_parallel.py --steps 3 --exact-compile  # a CUDA worker's default: compiled blocks on both GPUs
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
from bench.common import ensure_wan14b  # noqa: E402
from workers.pipeline.checkpoints import write_aitoolkit_lora  # noqa: E402
from workers.pipeline.params import resolve_prompt  # noqa: E402
from workers.pipeline.runtime import LoraSpec, WanRuntime  # noqa: E402
from workers.pipeline.shapes import WAN_14B_TRANSFORMER, WanShape  # noqa: E402

WORK = Path("/tmp/wan14b")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--exact-compile", action="store_true")
    args = parser.parse_args()
    model = ensure_wan14b(WORK / "model", device="cuda:0")
    lora = write_aitoolkit_lora(WORK / "loras/a/a.safetensors", shape=WanShape.of(WAN_14B_TRANSFORMER), rank=32)
    spec = LoraSpec(str(lora), sha256="a" * 64, multiplier=0.8, software_version="0.9.4")
    start = time.perf_counter()
    runtime = WanRuntime(
        model, device="cuda:0", cfg_device="cuda:1", fast_mode=False, exact_compile=args.exact_compile
    ).load()
    out = {
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "load_with_replica_s": round(time.perf_counter() - start, 1),
        "steps": args.steps,
        "exact_compile": args.exact_compile,
        "jobs": [],
    }
    replica = runtime.replica
    for size in ("1024x1024x41", "832x480x81"):
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
        results = {}
        for mode, model in (("two_gpus", replica), ("one_gpu", None)):
            runtime.replica = model
            marks = []
            result = runtime.render(params, loras=[spec], on_step=lambda d, t: marks.append(time.perf_counter()))
            results[mode] = {"s_per_step": (marks[-1] - marks[0]) / (len(marks) - 1), "frames": result.frames}
        runtime.replica = replica
        row = {
            "shape": size,
            **{m: round(r["s_per_step"], 3) for m, r in results.items()},
            "speedup_per_step": round(results["one_gpu"]["s_per_step"] / results["two_gpus"]["s_per_step"], 2),
            "frames_identical": bool(np.array_equal(results["one_gpu"]["frames"], results["two_gpus"]["frames"])),
            "max_abs_diff": int(np.abs(results["one_gpu"]["frames"].astype(int) - results["two_gpus"]["frames"]).max()),
        }
        out["jobs"].append(row)
        print(json.dumps(row), flush=True)
    out["peak_gib"] = [round(torch.cuda.max_memory_allocated(i) / 2**30, 1) for i in range(2)]
    Path(os.environ.get("OUT", ".")).joinpath("cfg_parallel.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
