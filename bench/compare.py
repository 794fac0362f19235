"""The reference server's per-job path against this project's worker runtime, same card, same lease.

Arm "reference" does what ai-toolkit-inference does per job: plain `WanPipeline` in bf16 with the
checkpoint's scheduler and default attention, the LoRA via `load_lora_weights` + `set_adapters`, a
full pipeline reload from disk whenever the LoRA changes, and an animated WebP written in line.
The other arms are `WanRuntime` as a worker runs it: loaded once, LoRAs resident, MP4 + poster
written on a finisher thread while the next job renders. "exact-compiled" is a CUDA worker's
default (`WAN_EXACT_COMPILE`): compiled blocks, the job's LoRAs copied into the stack adapter; each
row counts the graphs compiled so far, so a LoRA switch that recompiled would show. "exact" is
`WAN_EXACT_COMPILE=0`: peft's adapters switched with `set_adapters`, uncompiled. "fast" is
`"speed": "fast"`: the LoRAs merged into the fp8 copy. All arms render the same queue, alternating two
rank-32 ai-toolkit LoRAs. Steps are cut to fit the command limit; per-step and fixed per-job
costs are reported separately and 25-step jobs are extrapolated from them. With both exact and
fast, fast mode's guided flow is compared with exact mode's on exact mode's own inputs.

    python bench/compare.py --steps 2 --arms reference,exact-compiled
    python bench/compare.py --steps 2 --arms reference,exact
    python bench/compare.py --steps 2 --arms exact,fast
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ensure_wan14b, forward_flops, matmul_peak_tflops, psnr  # noqa: E402
from workers.pipeline.checkpoints import write_aitoolkit_lora  # noqa: E402
from workers.pipeline.params import resolve_prompt  # noqa: E402
from workers.pipeline.runtime import LoraSpec, WanRuntime  # noqa: E402
from workers.pipeline.shapes import WAN_14B_TRANSFORMER, WanShape, tokens_of  # noqa: E402
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
    return resolve_prompt(
        {
            "prompt": "sks a person walking on a beach at sunset",
            "width": width,
            "height": height,
            "num_frames": frames,
            "sample_steps": steps,
        },
        index=0,
    )


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
        out = pipe(
            prompt=p.prompt,
            negative_prompt=p.neg,
            height=p.height,
            width=p.width,
            num_frames=p.num_frames,
            num_inference_steps=p.sample_steps,
            guidance_scale=p.guidance_scale,
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(p.seed),
            callback_on_step_end=lambda *a: (marks.append(clock()), {})[1],
        )
        rendered = clock()
        frames = to_uint8(out.frames[0])
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "out.webp").write_bytes(webp_bytes(frames, fps=16))
        saved = time.perf_counter()
        rows.append(
            {
                "arm": "reference",
                "shape": size,
                "lora": f"{name}@{weight}",
                "reload_and_lora_s": loaded - start,
                "denoise_per_step_s": (marks[-1] - marks[0]) / (steps - 1),
                "first_step_s": marks[0] - loaded,
                "decode_s": rendered - marks[-1],
                "save_s": saved - rendered,
                "job_s": saved - start,
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            }
        )
        rows[-1]["frames"] = frames
        torch.cuda.reset_peak_memory_stats()
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "frames"}), flush=True)
    del pipe
    gc.collect()
    torch.cuda.empty_cache()
    return rows


class FlowCapture:
    """Keeps every (inputs, output) of a transformer's forwards, on the host, to replay them elsewhere."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_hook(self.hook, with_kwargs=True)

    def hook(self, _module, _args, kwargs, output):
        inputs = {k: kwargs[k].cpu() for k in ("hidden_states", "timestep", "encoder_hidden_states")}
        self.calls.append((inputs, output[0].float().cpu()))


def guided(cond, uncond, scale=4.0):
    return uncond + scale * (cond - uncond)


def service_arm(model, loras, steps, arm, capture=False):
    """The worker's loop: render, hand frames to a finisher thread for MP4 + poster, take the next job."""
    speed = "fast" if arm == "fast" else "exact"
    start = clock()
    runtime = WanRuntime(model, device="cuda", fast_mode=arm == "fast", exact_compile=arm == "exact-compiled").load()
    cold = clock() - start
    finisher = ThreadPoolExecutor(max_workers=1)

    def save(frames):
        begin = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            write_mp4(frames, Path(tmp) / "v.mp4", fps=16)
            (Path(tmp) / "p.png").write_bytes(png_bytes(frames[0]))
        return time.perf_counter() - begin

    if arm != "exact":  # compile for both sizes first (fast: build the fp8 copy too), as WAN_WARMUP does
        sizes = [tuple(int(v) for v in size.split("x")) for size in dict.fromkeys(s for s, _, _ in QUEUE)]
        cold += runtime.warm_up(sizes)
        print(json.dumps({"cold_start_with_warm_up_s": cold}), flush=True)
    rows, captures, last_end = [], [], None
    for size, name, weight in QUEUE:
        p = params_for(size, steps)
        spec = LoraSpec(
            str(loras[name]), sha256=name * 64, multiplier=weight, software_version="0.9.2"
        )  # UniPC, the checkpoint's scheduler: same math as the reference
        marks = []
        flows = FlowCapture(runtime.pipe.transformer) if capture else None
        start = clock()
        result = runtime.render(p, loras=[spec], speed=speed, on_step=lambda done, total: marks.append(clock()))
        end = clock()
        if flows is not None:
            flows.handle.remove()
            captures.append(((runtime.adapter_name(spec.sha256), weight), flows.calls))
        t = result.timings
        rows.append(
            {
                "arm": arm,
                "shape": size,
                "lora": f"{name}@{weight}",
                "lora_switch_s": t["lora_switch"],
                "fast_merge_s": t.get("fast_merge", 0.0),
                "text_encode_s": t["text_encode"],
                "denoise_per_step_s": (marks[-1] - marks[0]) / (steps - 1),
                "first_step_s": marks[0] - start - t["lora_switch"] - t.get("fast_merge", 0.0) - t["text_encode"],
                "decode_s": t["vae_decode"],
                "job_s": marks[-1] - start + t["vae_decode"],
                "idle_before_s": None if last_end is None else start - last_end,
                "graphs_compiled": counters["stats"]["unique_graphs"],
                "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                "frames": result.frames,
            }
        )
        rows[-1]["save"] = finisher.submit(save, result.frames)
        last_end = end
        torch.cuda.reset_peak_memory_stats()
    for row in rows:  # saving overlapped the next job's render, so it is not part of a job's time
        row["save_s"] = row.pop("save").result()
        print(json.dumps({k: v for k, v in row.items() if k != "frames"}), flush=True)
    return cold, rows, runtime, captures


def flow_deviation(runtime, captures):
    """Relative L2 of fast mode's guided flow against exact mode's, replaying exact mode's inputs."""
    fast = runtime.fast_transformer()
    out = []
    runtime.activate_loras([])  # adapters stay resident; merge reads them by name
    for (adapter, weight), calls in captures:
        runtime.merge_fast([(adapter, weight)])
        predicted = []
        with torch.inference_mode():
            for inputs, _ in calls:
                predicted.append(
                    fast.model(**{k: v.cuda() for k, v in inputs.items()}, return_dict=False)[0].float().cpu()
                )
        per_step = []
        for i in range(0, len(calls), 2):  # WanPipeline: conditional pass, then unconditional, per step
            exact = guided(calls[i][1], calls[i + 1][1])
            approx = guided(predicted[i], predicted[i + 1])
            per_step.append(round(((approx - exact).norm() / exact.norm()).item(), 4))
        out.append(per_step)
    return out


def summarize(arm_rows, steps, peak):
    """Per-job table values and 25-step extrapolation (fixed costs + 25 x the per-step cost)."""
    for row in arm_rows:
        tokens = tokens_of(*(int(v) for v in row["shape"].split("x")))
        row["tflops_per_step"] = round(2 * forward_flops(tokens) / row["denoise_per_step_s"] / 1e12)
        row["pct_of_matmul_peak"] = round(100 * row["tflops_per_step"] / peak)
        fixed = row["job_s"] - row["denoise_per_step_s"] * steps
        row["job_25_steps_s"] = round(fixed + 25 * row["denoise_per_step_s"], 1)
    return round(sum(r["job_25_steps_s"] for r in arm_rows), 1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--arms", default="reference,exact", help="any of reference, exact, exact-compiled, fast")
    parser.add_argument("--work", default="/tmp/wan14b")
    args = parser.parse_args()
    arms = args.arms.split(",")
    work = Path(args.work)
    model = ensure_wan14b(work / "model")
    shape = WanShape.of(WAN_14B_TRANSFORMER)
    loras = {
        n: write_aitoolkit_lora(work / f"loras/{n}/{n}.safetensors", shape=shape, rank=32, seed=i)
        for i, n in enumerate("AB")
    }
    summary = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "steps_run": args.steps,
        "matmul_peak_tflops": matmul_peak_tflops(),
        "cold_start_s": {},
        "queue_25_steps_s": {},
        "jobs": {},
    }
    frames = {}
    captures = []
    for arm in arms:
        if arm == "reference":
            rows = reference_arm(model, loras, args.steps)
        else:
            cold, rows, runtime, captured = service_arm(
                model, loras, args.steps, arm, capture=arm == "exact" and "fast" in arms
            )
            summary["cold_start_s"][arm] = round(cold, 1)
            captures = captures or captured
            if arm == "fast" and captures:  # one job of each size
                summary["fast_flow_rel_l2_per_step"] = flow_deviation(runtime, captures[:2])
            del runtime
            gc.collect()
            torch.cuda.empty_cache()
        frames[arm] = [row.pop("frames") for row in rows]
        summary["queue_25_steps_s"][arm] = summarize(rows, args.steps, summary["matmul_peak_tflops"])
        summary["jobs"][arm] = [{k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    base = "reference" if "reference" in arms else "exact"
    summary["videos_per_hour"] = {
        arm: round(3600 * len(QUEUE) / t, 1) for arm, t in summary["queue_25_steps_s"].items()
    }
    summary["speedup_vs_" + base] = {
        arm: round(summary["queue_25_steps_s"][base] / t, 3) for arm, t in summary["queue_25_steps_s"].items()
    }
    summary["psnr_vs_" + base] = {
        arm: [round(psnr(a, b), 1) for a, b in zip(frames[arm], frames[base])] for arm in arms if arm != base
    }
    (OUT / "compare.json").write_text(json.dumps(summary, indent=1))

    print(
        f"\n{summary['device']}, bf16 matmul peak {summary['matmul_peak_tflops']} TFLOP/s, {args.steps} steps run, "
        f"cold start {summary['cold_start_s']} s"
    )
    print(
        "shape | lora | arm | reload/switch s | merge s | step s | TFLOP/s (% of peak) | decode s | save s "
        "| idle before s | job@25 s | graphs | peak GiB"
    )
    for i, (size, name, weight) in enumerate(QUEUE):
        for arm in arms:
            a = summary["jobs"][arm][i]
            switch = a.get("reload_and_lora_s", a.get("lora_switch_s"))
            print(
                f"{size} | {name}@{weight} | {arm} | {switch} | {a.get('fast_merge_s', '-')} | "
                f"{a['denoise_per_step_s']} | {a['tflops_per_step']} ({a['pct_of_matmul_peak']}%) | "
                f"{a['decode_s']} | {a['save_s']} | {a.get('idle_before_s', '-')} | {a['job_25_steps_s']} | "
                f"{a.get('graphs_compiled', '-')} | {round(a['peak_gib'], 1)}"
            )
    for key in (
        "queue_25_steps_s",
        "videos_per_hour",
        "speedup_vs_" + base,
        "psnr_vs_" + base,
        "fast_flow_rel_l2_per_step",
    ):
        print(key, json.dumps(summary.get(key)))


if __name__ == "__main__":
    main()
