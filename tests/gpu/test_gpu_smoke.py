"""On a CUDA machine: the tiny pipeline renders through the worker runtime in bf16. Skipped without CUDA."""

import pytest
import torch

from workers.pipeline.params import resolve_prompt
from workers.pipeline.runtime import LoraSpec, WanRuntime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


PARAMS = resolve_prompt({"prompt": "a cat", "width": 128, "height": 128, "num_frames": 9, "sample_steps": 2}, index=0)


def test_tiny_pipeline_renders_on_cuda(tiny_model):
    result = WanRuntime(str(tiny_model), device="cuda").render(PARAMS)
    assert result.frames.shape == (9, 128, 128, 3)


def test_fast_mode_renders_on_cuda(tiny_model, lora_files):
    runtime = WanRuntime(str(tiny_model), device="cuda", fast_compile=False)
    lora = LoraSpec(str(lora_files["a"]), sha256="a" * 64, multiplier=0.8)
    result = runtime.render(PARAMS, loras=[lora], speed="fast")
    assert result.speed == "fast" and result.frames.shape == (9, 128, 128, 3)


def test_compiled_exact_mode_switches_loras_without_recompiling(tiny_model, lora_files):
    from torch._dynamo.utils import counters

    runtime = WanRuntime(str(tiny_model), device="cuda", fast_mode=False, exact_compile=True)
    a, b = (LoraSpec(str(lora_files[n]), sha256=n * 64, multiplier=m) for n, m in (("a", 1.0), ("b", 0.7)))
    runtime.render(PARAMS, loras=[a])
    graphs = counters["stats"]["unique_graphs"]
    for loras in ([b], [], [a, b]):
        assert runtime.render(PARAMS, loras=loras).frames.shape == (9, 128, 128, 3)
    assert counters["stats"]["unique_graphs"] == graphs
