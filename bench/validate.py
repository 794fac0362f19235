"""Checks compare.py's extrapolation: one 832x480x81 job through the exact runtime at 2 steps, then
the same job at the full 25 steps; the 25-step time predicted from the first (fixed cost + 25 x the
per-step cost) against the one measured.

    python bench/validate.py                  # exact mode
    python bench/validate.py --exact-compile  # compiled exact mode (the 1-step warm-up compiles)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ensure_wan14b  # noqa: E402
from bench.compare import clock, params_for  # noqa: E402
from workers.pipeline.checkpoints import write_aitoolkit_lora  # noqa: E402
from workers.pipeline.runtime import LoraSpec, WanRuntime  # noqa: E402
from workers.pipeline.shapes import WAN_14B_TRANSFORMER, WanShape  # noqa: E402

OUT = Path(os.environ.get("OUT", "."))


def main(work=Path("/tmp/wan14b")):
    parser = argparse.ArgumentParser()
    parser.add_argument("--exact-compile", action="store_true")
    args = parser.parse_args()
    model = ensure_wan14b(work / "model")
    lora = write_aitoolkit_lora(work / "loras/B/B.safetensors", shape=WanShape.of(WAN_14B_TRANSFORMER), rank=32, seed=1)
    runtime = WanRuntime(model, device="cuda", fast_mode=False, exact_compile=args.exact_compile).load()
    spec = LoraSpec(str(lora), sha256="B" * 64, multiplier=0.7, software_version="0.9.2")
    runtime.render(params_for("832x480x81", 1), loras=[spec])  # warm-up: first LoRA load, kernels
    runs = {}
    for steps in (2, 25):
        marks = []
        start = clock()
        runtime.render(params_for("832x480x81", steps), loras=[spec], on_step=lambda *_: marks.append(clock()))
        total = clock() - start
        per_step = (marks[-1] - marks[0]) / (steps - 1)
        runs[steps] = {
            "job_s": round(total, 2),
            "per_step_s": round(per_step, 3),
            "fixed_s": round(total - steps * per_step, 2),
        }
    predicted = runs[2]["fixed_s"] + 25 * runs[2]["per_step_s"]
    result = {
        "device": torch.cuda.get_device_name(),
        "exact_compile": args.exact_compile,
        "runs": runs,
        "predicted_25_s": round(predicted, 1),
        "measured_25_s": runs[25]["job_s"],
        "error_pct": round(100 * (predicted / runs[25]["job_s"] - 1), 2),
    }
    (OUT / "validate.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
