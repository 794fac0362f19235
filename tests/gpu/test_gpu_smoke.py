"""On a CUDA machine: the tiny pipeline renders through the worker runtime in bf16. Skipped without CUDA."""
import pytest
import torch

from workers.pipeline.params import resolve_prompt
from workers.pipeline.runtime import WanRuntime

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_tiny_pipeline_renders_on_cuda(tiny_model):
    runtime = WanRuntime(str(tiny_model), device="cuda")
    params = resolve_prompt({"prompt": "a cat", "width": 128, "height": 128, "num_frames": 9, "sample_steps": 2},
                            index=0)
    result = runtime.render(params)
    assert result.frames.shape == (9, 128, 128, 3)
