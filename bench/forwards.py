"""One transformer forward of the full-size 14B at 1024x1024x41, per attention kernel and per mode.

Same card, same process, same weights, a rank-32 ai-toolkit LoRA active: the exact runtime's
transformer with diffusers' default attention, with cuDNN and with flash attention; fast mode's
fp8 copy (LoRA merged) eager and regionally compiled; the cost of merging another LoRA stack
into the compiled fp8 copy and whether that recompiles; and exact mode regionally compiled with
peft adapters live (and what a new multiplier then costs). Relative errors are against the exact
runtime with default attention and the same LoRA.

    python bench/forwards.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ensure_wan14b, forward_flops, matmul_peak_tflops, timed  # noqa: E402
from workers.pipeline.checkpoints import write_aitoolkit_lora  # noqa: E402
from workers.pipeline.fast import FastTransformer  # noqa: E402
from workers.pipeline.lora_stack import peft_layers  # noqa: E402
from workers.pipeline.runtime import LoraSpec, WanRuntime  # noqa: E402
from workers.pipeline.shapes import WAN_14B_TRANSFORMER, WanShape, tokens_of  # noqa: E402

WORK = Path("/tmp/wan14b")
OUT = Path(os.environ.get("OUT", "."))
FRAMES, HEIGHT, WIDTH = 41, 1024, 1024
results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}


def log(name, **values):
    row = {"variant": name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}}
    results["rows"].append(row)
    print(json.dumps(row), flush=True)
    (OUT / "forwards.json").write_text(json.dumps(results, indent=1))


def main():
    model = ensure_wan14b(WORK / "model")
    shape = WanShape.of(WAN_14B_TRANSFORMER)
    loras = [
        LoraSpec(
            str(write_aitoolkit_lora(WORK / f"loras/{n}/{n}.safetensors", shape=shape, rank=32, seed=i)),
            sha256=n * 64,
            multiplier=m,
        )
        for i, (n, m) in enumerate([("A", 1.0), ("B", 0.7)])
    ]
    results["matmul_peak_tflops"] = matmul_peak_tflops()

    runtime = WanRuntime(model, device="cuda").load()
    runtime.activate_loras(loras[:1])
    exact = runtime.pipe.transformer
    gen = torch.Generator("cuda").manual_seed(0)
    latents = torch.randn(
        1, 16, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8, device="cuda", generator=gen, dtype=torch.bfloat16
    )
    text = torch.randn(1, 512, 4096, device="cuda", generator=gen, dtype=torch.bfloat16)
    timestep = torch.tensor([500.0], device="cuda")
    flops = forward_flops(tokens_of(WIDTH, HEIGHT, FRAMES))

    def forward(transformer):
        with torch.inference_mode():
            return transformer(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[
                0
            ].float()

    def rel(out, ref):
        return ((out - ref).norm() / ref.norm()).item()

    seconds, _, reference = timed(lambda: forward(exact))
    base = seconds
    log("exact, default attention (A@1.0)", s=seconds, tflops=flops / seconds / 1e12)
    for backend in ("_native_cudnn", "_native_flash"):
        exact.set_attention_backend(backend)
        seconds, _, out = timed(lambda: forward(exact), reps=1)
        log(
            f"exact, {backend}",
            s=seconds,
            tflops=flops / seconds / 1e12,
            speedup=base / seconds,
            rel_err=rel(out, reference),
        )
    exact.reset_attention_backend()
    runtime.activate_loras(loras[1:])
    _, _, exact_b = timed(lambda: forward(exact), reps=0)
    torch.cuda.empty_cache()
    log(
        "inductor config",
        coordinate_descent_tuning=torch._inductor.config.coordinate_descent_tuning,
        reserved_gib=torch.cuda.memory_reserved() / 2**30,
    )

    fast = FastTransformer(model, device="cuda", dtype=torch.bfloat16, compile=False)
    stack = [(runtime.adapter_name(loras[0].sha256), 1.0)]
    merge = fast.merge(exact, stack, peft_layers(exact, stack))
    seconds, _, out = timed(lambda: forward(fast.model), reps=1)
    log(
        "fast eager (fp8 rowwise, LoRA A merged)",
        s=seconds,
        speedup=base / seconds,
        rel_err=rel(out, reference),
        build_s=fast.build_seconds,
        merge_s=merge,
    )
    torch.cuda.empty_cache()
    fast.model.compile_repeated_blocks(fullgraph=True)
    seconds, first, out = timed(lambda: forward(fast.model))
    log(
        "fast compiled",
        s=seconds,
        speedup=base / seconds,
        tflops=flops / seconds / 1e12,
        rel_err=rel(out, reference),
        first_call_s=first,
        peak_gib=torch.cuda.max_memory_allocated() / 2**30,
    )

    # Another stack merged into the compiled copy: in-place weights, so no recompile
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    stack = [(runtime.adapter_name(loras[1].sha256), 0.7)]
    merge = fast.merge(exact, stack, peft_layers(exact, stack))
    seconds, first, out = timed(lambda: forward(fast.model))
    log(
        "fast compiled after merging B@0.7",
        s=seconds,
        first_call_s=first,
        merge_s=merge,
        rel_err_vs_exact_b=rel(out, exact_b),
        new_graphs=torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs,
    )
    fast = None  # frees the fp8 copy
    torch.cuda.empty_cache()

    # Exact mode compiled with live peft adapters: what a new multiplier then costs
    try:
        exact.compile_repeated_blocks(fullgraph=True)
        seconds, first, out = timed(lambda: forward(exact))
        log(
            "exact compiled (B@0.7)",
            s=seconds,
            speedup=base / seconds,
            first_call_s=first,
            rel_err_vs_exact_b=rel(out, exact_b),
        )
        runtime.activate_loras([LoraSpec(loras[1].path, loras[1].sha256, 0.5)])
        seconds, first, _ = timed(lambda: forward(exact), reps=1)
        log("exact compiled, new multiplier B@0.5", s=seconds, first_call_s=first)
    except Exception as exc:  # noqa: BLE001 - a failure here is a result too
        log("exact compiled", error=f"{type(exc).__name__}: {str(exc)[:300]}")

    print(
        f"\n{results['device']}, bf16 matmul {results['matmul_peak_tflops']} TFLOP/s, one forward at "
        f"{WIDTH}x{HEIGHT}x{FRAMES}"
    )
    for row in results["rows"]:
        print(" | ".join(f"{k}={v}" for k, v in row.items()))


if __name__ == "__main__":
    main()
