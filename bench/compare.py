"""The reference server's per-job path against this project's worker runtime, same card, same lease.

Arm "reference" does what ai-toolkit-inference does per job: plain `WanPipeline` in bf16 with the
checkpoint's scheduler and default attention, the LoRA via `load_lora_weights` + `set_adapters`, a
full pipeline reload from disk whenever the LoRA changes, and an animated WebP as output.
Arm "service" is `WanRuntime` as the worker runs it: loaded once, LoRAs resident and switched with
`set_adapters`, MP4 + poster. Both render the same queue of jobs, alternating two rank-32
ai-toolkit LoRAs. Steps are cut to fit the command limit; per-step and fixed per-job costs are
reported separately and 25-step jobs are extrapolated from them.

    python bench/compare.py --steps 2
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
from bench.common import ensure_wan14b, forward_flops, psnr, tokens_of  # noqa: E402
from workers.pipeline.checkpoints import write_aitoolkit_lora  # noqa: E402
from workers.pipeline.params import resolve_prompt  # noqa: E402
from workers.pipeline.runtime import LoraSpec, WanRuntime  # noqa: E402
from workers.pipeline.shapes import WAN_14B_TRANSFORMER, WanShape  # noqa: E402
from workers.pipeline.video import png_bytes, to_uint8, webp_bytes, write_mp4  # noqa: E402

QUEUE = [("1024x1024x41", "A", 1.0), ("832x480x81", "B", 0.7), ("1024x1024x41", "A", 0.5), ("832x480x81", "B", 1.0)]
OUT = Path(os.environ.get("OUT", "."))


def sync():
    torch.cuda.synchronize()


def clock():
    sync()
    return time.perf_counter()


def params_for(size, steps):
    width, height, frames = (int(v) for v in size.split("x"))
    return resolve_prompt({"prompt": "sks a person walking on a beach at sunset", "width": width, "height": height,
                           "num_frames": frames, "sample_steps": steps}, index=0)


def reference_arm(model, loras, steps):
    from diffusers import WanPipeline

    rows, pipe, current = [], None, None
    for size, name, weight in QUEUE:
        p = params_for(size, steps)
        start = clock()
        if name != current:  # the reference reloads the whole pipeline on every LoRA change
            del pipe
            gc.collect()
            torch.cuda.empty_cache()
            pipe = WanPipeline.from_pretrained(model, torch_dtype=torch.bfloat16).to("cuda")
            pipe.set_progress_bar_config(disable=True)
            pipe.load_lora_weights(str(loras[name].parent), weight_name=loras[name].name, adapter_name="lora")
            current = name
        pipe.set_adapters(["lora"], [weight])
        loaded = clock()
        marks = []
        out = pipe(prompt=p.prompt, negative_prompt=p.neg, height=p.height, width=p.width, num_frames=p.num_frames,
                   num_inference_steps=p.sample_steps, guidance_scale=p.guidance_scale, output_type="np",
                   generator=torch.Generator("cpu").manual_seed(p.seed),
                   callback_on_step_end=lambda *a: (marks.append(clock()), {})[1])
        rendered = clock()
        frames = to_uint8(out.frames[0])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "out.webp").write_bytes(webp_bytes(frames, fps=16))
        saved = time.perf_counter()
        rows.append({"arm": "reference", "shape": size, "lora": f"{name}@{weight}",
                     "reload_and_lora_s": loaded - start, "denoise_per_step_s": (marks[-1] - marks[0]) / (steps - 1),
                     "first_step_s": marks[0] - loaded, "decode_s": rendered - marks[-1], "save_s": saved - rendered,
                     "job_s": saved - start, "peak_gib": torch.cuda.max_memory_allocated() / 2**30})
        rows[-1]["frames"] = frames
        torch.cuda.reset_peak_memory_stats()
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "frames"}), flush=True)
    del pipe
    gc.collect()
    torch.cuda.empty_cache()
    return rows


def service_arm(model, loras, steps):
    start = clock()
    runtime = WanRuntime(model, device="cuda").load()
    cold = clock() - start
    rows = []
    for size, name, weight in QUEUE:
        p = params_for(size, steps)
        spec = LoraSpec(str(loras[name]), sha256=name * 64, multiplier=weight,
                        software_version="0.9.2")  # UniPC, the checkpoint's scheduler: same math as the reference
        marks = []
        start = clock()
        result = runtime.render(p, loras=[spec], on_step=lambda done, total: marks.append(clock()))
        rendered = clock()
        with tempfile.TemporaryDirectory() as tmp:
            write_mp4(result.frames, Path(tmp) / "v.mp4", fps=16)
            (Path(tmp) / "p.png").write_bytes(png_bytes(result.frames[0]))
        saved = time.perf_counter()
        t = result.timings
        rows.append({"arm": "service", "shape": size, "lora": f"{name}@{weight}", "lora_switch_s": t["lora_switch"],
                     "text_encode_s": t["text_encode"], "denoise_per_step_s": (marks[-1] - marks[0]) / (steps - 1),
                     "first_step_s": marks[0] - start - t["lora_switch"] - t["text_encode"],
                     "decode_s": t["vae_decode"], "save_s": saved - rendered, "job_s": saved - start,
                     "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "frames": result.frames})
        torch.cuda.reset_peak_memory_stats()
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "frames"}), flush=True)
    return cold, rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--work", default="/tmp/wan14b")
    args = parser.parse_args()
    work = Path(args.work)
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):  # warm up cuBLAS before timing the card's bf16 matmul peak
        x @ x
    start = clock()
    for _ in range(10):
        x @ x
    peak = 10 * 2 * 8192**3 / (clock() - start) / 1e12
    del x
    model = ensure_wan14b(work / "model")
    shape = WanShape.of(WAN_14B_TRANSFORMER)
    loras = {n: write_aitoolkit_lora(work / f"loras/{n}/{n}.safetensors", shape=shape, rank=32, seed=i)
             for i, n in enumerate("AB")}
    cold, service = service_arm(model, loras, args.steps)
    torch.cuda.empty_cache()
    reference = reference_arm(model, loras, args.steps)

    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "steps_run": args.steps,
               "matmul_peak_tflops": round(peak), "service_cold_start_s": round(cold, 1), "jobs": []}
    for s, r in zip(service, reference):
        tokens = tokens_of(*(int(v) for v in s["shape"].split("x")))
        step_flops = 2 * forward_flops(tokens)
        row = {"shape": s["shape"], "lora": s["lora"]}
        for arm in (s, r):
            fixed = arm["job_s"] - arm["denoise_per_step_s"] * args.steps
            row[arm["arm"]] = {k: round(v, 3) for k, v in arm.items() if isinstance(v, float)}
            row[arm["arm"]]["tflops_per_step"] = round(step_flops / arm["denoise_per_step_s"] / 1e12)
            row[arm["arm"]]["job_25_steps_s"] = round(fixed + 25 * arm["denoise_per_step_s"], 1)
        row["psnr_service_vs_reference_db"] = round(psnr(s["frames"], r["frames"]), 1)
        summary["jobs"].append(row)
    totals = {arm: sum(j[arm]["job_25_steps_s"] for j in summary["jobs"]) for arm in ("service", "reference")}
    summary["queue_25_steps_s"] = totals
    summary["videos_per_hour"] = {arm: round(3600 * len(QUEUE) / t, 1) for arm, t in totals.items()}
    summary["speedup"] = round(totals["reference"] / totals["service"], 3)
    (OUT / "compare.json").write_text(json.dumps(summary, indent=1))

    print(f"\n{summary['device']}, matmul peak {summary['matmul_peak_tflops']} TFLOP/s, {args.steps} steps run, "
          f"service cold start {summary['service_cold_start_s']} s")
    print("shape | lora | arm | reload/switch s | step s | TFLOP/s | decode s | save s | job@25 s | peak GiB")
    for j in summary["jobs"]:
        for arm in ("reference", "service"):
            a = j[arm]
            switch = a.get("reload_and_lora_s", a.get("lora_switch_s"))
            print(f"{j['shape']} | {j['lora']} | {arm} | {switch} | {a['denoise_per_step_s']} | {a['tflops_per_step']} |"
                  f" {a['decode_s']} | {a['save_s']} | {a['job_25_steps_s']} | {round(a['peak_gib'], 1)}")
        print(f"  PSNR service vs reference: {j['psnr_service_vs_reference_db']} dB")
    print(f"queue of {len(QUEUE)} at 25 steps: {totals}; videos/hour {summary['videos_per_hour']}; "
          f"speed-up {summary['speedup']}x")


if __name__ == "__main__":
    main()
