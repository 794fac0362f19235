"""GPU smoke test of the real wan21_14b shapes through the worker runtime.

Builds a full-size random-weight Wan 2.1 T2V 14B pipeline (14B transformer,
UMT5-XXL-size encoder, full VAE), writes it as a diffusers folder, loads it
with `WanRuntime` exactly as a worker does, writes two rank-32 ai-toolkit
LoRAs of the true 14B shapes, and renders short jobs at 832x480x81 and
1024x1024x41 while switching LoRAs between them. Prints per-phase timings and
peak GPU memory; writes the same as JSON to $OUT/gpu_smoke.json.

    python bench/gpu_smoke.py --steps 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from workers.pipeline.checkpoints import write_aitoolkit_lora, write_random_wan  # noqa: E402
from workers.pipeline.params import resolve_prompt  # noqa: E402
from workers.pipeline.runtime import LoraSpec, WanRuntime  # noqa: E402
from workers.pipeline.shapes import UMT5_XXL, WAN_14B_TRANSFORMER, WanShape  # noqa: E402
from workers.pipeline.video import png_bytes, write_mp4  # noqa: E402

GIB = 2**30


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", default="/tmp/wan14b")
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.work)
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps": args.steps}

    _, out["build_and_save_s"] = timed(
        lambda: write_random_wan(
            work / "model",
            transformer_config=WAN_14B_TRANSFORMER,
            text_encoder_config=UMT5_XXL,
            vae_config={},
            dtype=torch.bfloat16,
            device="cuda",
        )
    )
    gc.collect()
    torch.cuda.empty_cache()
    shape = WanShape.of(WAN_14B_TRANSFORMER)
    loras = {
        "A": write_aitoolkit_lora(work / "loras/a/a.safetensors", shape=shape, rank=32, seed=1),
        "B": write_aitoolkit_lora(
            work / "loras/b/b.safetensors", shape=shape, rank=32, seed=2, software_version="0.9.2"
        ),
    }
    out["lora_file_mib"] = round(loras["A"].stat().st_size / 2**20, 1)

    runtime = WanRuntime(str(work / "model"), device="cuda")
    _, out["load_s"] = timed(runtime.load)
    out["resident_after_load_gib"] = round(torch.cuda.memory_allocated() / GIB, 1)
    jobs = [("832x480x81", "A", 1.0), ("1024x1024x41", "B", 0.7), ("832x480x81", "A", 0.5), ("1024x1024x41", "A", 1.0)]
    out["jobs"] = []
    for size, name, multiplier in jobs:
        width, height, frames = (int(v) for v in size.split("x"))
        params = resolve_prompt(
            {
                "prompt": "sks a photo of a person walking on a beach",
                "width": width,
                "height": height,
                "num_frames": frames,
                "sample_steps": args.steps,
            },
            index=0,
        )
        lora = LoraSpec(
            str(loras[name]),
            sha256=name * 64,
            multiplier=multiplier,
            software_version="0.9.4" if name == "A" else "0.9.2",
        )
        torch.cuda.reset_peak_memory_stats()
        result, total = timed(lambda: runtime.render(params, loras=[lora]))
        with tempfile.TemporaryDirectory() as tmp:
            _, encode = timed(lambda: write_mp4(result.frames, Path(tmp) / "v.mp4", fps=16))
            _, save = timed(lambda: (Path(tmp) / "p.png").write_bytes(png_bytes(result.frames[0])))
        row = {
            "shape": size,
            "lora": f"{name}@{multiplier}",
            "scheduler": result.scheduler,
            **{k: round(v, 3) for k, v in result.timings.items()},
            "mp4_encode": round(encode, 3),
            "save": round(save, 3),
            "render_total": round(total, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 1),
        }
        out["jobs"].append(row)
        print(json.dumps(row), flush=True)
    Path(os.environ.get("OUT", ".")).joinpath("gpu_smoke.json").write_text(json.dumps(out, indent=1))

    print(
        f"\n{out['device']}  build+save {out['build_and_save_s']:.0f}s  load {out['load_s']:.1f}s  "
        f"resident {out['resident_after_load_gib']} GiB  LoRA file {out['lora_file_mib']} MiB"
    )
    cols = [
        "shape",
        "lora",
        "scheduler",
        "lora_switch",
        "text_encode",
        "denoise_per_step",
        "vae_decode",
        "mp4_encode",
        "save",
        "peak_gib",
    ]
    print(" | ".join(cols))
    for row in out["jobs"]:
        print(" | ".join(str(row[c]) for c in cols))


if __name__ == "__main__":
    main()
