"""Did a change move the frames? Render the compare queue with one runtime setting and keep the
frames, then compare two such runs pixel for pixel (e.g. before and after a refactor, same card).

    python bench/frames.py render --arm exact-compiled --steps 2 --out /tmp/after.npz
    python bench/frames.py render --arm exact-compiled --steps 2 --out /tmp/before.npz --code /path/to/old/tree
    python bench/frames.py diff /tmp/before.npz /tmp/after.npz

`--code` imports the runtime from another checkout (its `WanRuntime(model, device=..., fast_mode=...,
exact_compile=...)`), so the same script drives old and new code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent.parent
WORK = Path("/tmp/wan14b")  # bench/compare.py's default: one random-weight 14B per machine
ARMS = {
    "exact": {"fast_mode": False, "exact_compile": False},
    "exact-compiled": {"fast_mode": False, "exact_compile": True},
}


def render(args) -> None:
    sys.path.insert(0, str(Path(args.code).resolve() if args.code else HERE))
    sys.path.insert(1, str(HERE))  # bench.common, when --code names a tree without it
    import torch

    from bench.common import ensure_wan14b
    from bench.compare import QUEUE
    from workers.pipeline.checkpoints import write_aitoolkit_lora
    from workers.pipeline.params import resolve_prompt
    from workers.pipeline.runtime import LoraSpec, WanRuntime
    from workers.pipeline.shapes import WAN_14B_TRANSFORMER, WanShape

    model = ensure_wan14b(WORK / "model")
    shape = WanShape.of(WAN_14B_TRANSFORMER)
    loras = {
        name: write_aitoolkit_lora(WORK / f"loras/{name}/{name}.safetensors", shape=shape, rank=32, seed=seed)
        for seed, name in enumerate("AB")
    }
    runtime = WanRuntime(model, device="cuda", **ARMS[args.arm]).load()
    frames = {}
    for index, (size, name, multiplier) in enumerate(QUEUE):
        width, height, count = (int(v) for v in size.split("x"))
        params = resolve_prompt(
            {
                "prompt": "sks a person walking on a beach at sunset",
                "width": width,
                "height": height,
                "num_frames": count,
                "sample_steps": args.steps,
            },
            index=0,
        )
        spec = LoraSpec(str(loras[name]), sha256=name * 64, multiplier=multiplier, software_version="0.9.4")
        frames[f"job{index}"] = runtime.render(params, loras=[spec], scheduler="euler").frames
    np.savez(args.out, **frames)
    print(json.dumps({"saved": args.out, "code": args.code or str(HERE), "device": torch.cuda.get_device_name()}))


def diff(args) -> None:
    a, b = np.load(args.a), np.load(args.b)
    for key in a.files:
        delta = np.abs(a[key].astype(int) - b[key].astype(int))
        print(
            json.dumps(
                {
                    "job": key,
                    "identical": bool((delta == 0).all()),
                    "max_abs": int(delta.max()),
                    "differing_values": float((delta > 0).mean()),
                }
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("render")
    make.add_argument("--arm", choices=ARMS, default="exact-compiled")
    make.add_argument("--steps", type=int, default=2)
    make.add_argument("--out", required=True)
    make.add_argument("--code", help="a checkout whose runtime renders (default: this one)")
    compare = commands.add_parser("diff")
    compare.add_argument("a")
    compare.add_argument("b")
    args = parser.parse_args()
    (render if args.command == "render" else diff)(args)


if __name__ == "__main__":
    main()
