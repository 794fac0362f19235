"""Fast mode's 8-bit self-attention on the full-size 14B: seconds per transformer forward and deviation.

One card, one process, one random-weight transformer; for each video size: the reference forward
(bf16, diffusers' default attention, what the reference server runs: a denoising step with CFG is
two of these), fast mode's fp8 copy regionally compiled with bf16 cuDNN attention (today's fast
mode), and the same with the 8-bit cuDNN frontend attention. Deviation is the relative L2 of each
forward's output against the reference forward on the same inputs.

    python bench/fp8_attention.py --sizes 1024x1024x41,832x480x81
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import forward_flops, timed  # noqa: E402
from workers.pipeline.attention import use_fp8_self_attention  # noqa: E402
from workers.pipeline.fast import ATTENTION, _is_block_linear  # noqa: E402
from workers.pipeline.shapes import WAN_14B_TRANSFORMER, tokens_of  # noqa: E402

OUT = Path(os.environ.get("OUT", "."))
results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}


def log(**row):
    results["rows"].append(row)
    print(json.dumps(row), flush=True)
    (OUT / "fp8_attention.json").write_text(json.dumps(results, indent=1))


def inputs(width, height, frames, text_dim):
    generator = torch.Generator("cuda").manual_seed(0)
    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    hidden = torch.randn(latent, generator=generator, device="cuda", dtype=torch.bfloat16)
    text = torch.randn((1, 512, text_dim), generator=generator, device="cuda", dtype=torch.bfloat16)
    return hidden, torch.tensor([500.0], device="cuda"), text


def forward(model, hidden, t, text):
    return lambda: model(hidden, t, text, return_dict=False)[0]


def fast_copy(model, attention: str):
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    fast = copy.deepcopy(model)
    quantize_(fast, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=_is_block_linear)
    fast.set_attention_backend(ATTENTION)
    if attention == "fp8":
        use_fp8_self_attention(fast)
    fast.compile_repeated_blocks(fullgraph=True, dynamic=False)
    return fast


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1024x1024x41,832x480x81")
    parser.add_argument("--variants", default="fast-bf16,fast-fp8")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    start = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = WanTransformer3DModel(**WAN_14B_TRANSFORMER).eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    print(f"built the random 14B transformer in {time.perf_counter() - start:.1f}s", flush=True)
    references = {}
    with torch.inference_mode():
        for width, height, frames in sizes:
            hidden, t, text = inputs(width, height, frames, model.config.text_dim)
            seconds, _, out = timed(forward(model, hidden, t, text), reps=3)
            references[(width, height, frames)] = out.float()
            tokens = tokens_of(width, height, frames)
            log(
                size=f"{width}x{height}x{frames}",
                variant="reference",
                s=round(seconds, 3),
                tflops=round(forward_flops(tokens) / seconds / 1e12),
                speedup=1.0,
                rel_l2=0.0,
            )
            results.setdefault("reference_s", {})[f"{width}x{height}x{frames}"] = seconds
        for variant in args.variants.split(","):
            fast = fast_copy(model, variant.removeprefix("fast-"))
            for width, height, frames in sizes:
                hidden, t, text = inputs(width, height, frames, model.config.text_dim)
                seconds, first, out = timed(forward(fast, hidden, t, text), reps=3)
                want = references[(width, height, frames)]
                error = ((out.float() - want).norm() / want.norm()).item()
                reference = results["reference_s"][f"{width}x{height}x{frames}"]
                log(
                    size=f"{width}x{height}x{frames}",
                    variant=variant,
                    s=round(seconds, 3),
                    speedup=round(reference / seconds, 3),
                    rel_l2=round(error, 4),
                    first_call_s=round(first, 1),
                )
            del fast
            gc.collect()
            torch.cuda.empty_cache()
    print("\n| size | variant | s per forward | vs reference | rel. L2 vs reference |")
    print("|---|---|---|---|---|")
    for row in results["rows"]:
        print(f"| {row['size']} | {row['variant']} | {row['s']} | {row['speedup']}x | {row['rel_l2']} |")


if __name__ == "__main__":
    main()
