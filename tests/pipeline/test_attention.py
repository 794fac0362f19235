"""Fast mode's 8-bit self-attention: the quantized attention stays close to float attention, sits in a
compiled block without a graph break, and every fast output says which attention ran.

On the CPU the op runs its reference implementation (e4m3 inputs and output, float math); the GPU
benchmark (bench/fp8_attention.py) measures the cuDNN kernel and its deviation on the full model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bench.common import psnr
from tests.pipeline.test_fast import CLOSE_DB
from tests.pipeline.test_runtime import PARAMS, spec
from workers.pipeline.attention import FP8_ATTENTION, Fp8SelfAttention, attention_fp8, use_fp8_self_attention
from workers.pipeline.config import RuntimeConfig
from workers.pipeline.runtime import WanRuntime


def relative_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def test_8bit_attention_is_close_to_float_attention_but_quantized():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 256, 4, 32) for _ in range(3))  # (batch, tokens, heads, head_dim)
    want = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    got = attention_fp8(q, k, v)
    assert got.shape == want.shape and got.dtype == q.dtype
    assert 0.005 < relative_l2(got, want) < 0.1  # e4m3 rounding: visible, small


def test_a_block_with_8bit_attention_compiles_without_graph_breaks(tiny_model):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel.from_pretrained(str(tiny_model), subfolder="transformer").eval()
    hidden = torch.randn(1, model.config.in_channels, 3, 16, 16)
    text = torch.randn(1, 8, model.config.text_dim)
    with torch.no_grad():
        want = model(hidden, torch.tensor([500.0]), text, return_dict=False)[0]
        assert use_fp8_self_attention(model) == len(model.blocks)
        assert isinstance(model.blocks[0].attn1.processor, Fp8SelfAttention)
        eager = model(hidden, torch.tensor([500.0]), text, return_dict=False)[0]
        model.blocks[0] = torch.compile(model.blocks[0], fullgraph=True, backend="aot_eager")  # raises on a break
        compiled = model(hidden, torch.tensor([500.0]), text, return_dict=False)[0]
    assert torch.equal(compiled, eager)
    assert 0 < relative_l2(eager, want) < 0.1


def test_fast_jobs_with_8bit_attention_stay_close_and_say_so(tiny_model, lora_files):
    stack = [spec(lora_files["a"], 0.8)]
    bf16 = WanRuntime(str(tiny_model), device="cpu").render(PARAMS, loras=stack, speed="fast")
    fp8 = WanRuntime(str(tiny_model), device="cpu", fast_attention="fp8").render(PARAMS, loras=stack, speed="fast")
    assert (bf16.attention, fp8.attention) == ("bf16", "fp8")
    assert not np.array_equal(bf16.frames, fp8.frames)
    assert psnr(bf16.frames, fp8.frames) > CLOSE_DB


def test_which_attention_fast_mode_gets():
    assert RuntimeConfig.resolve("m", device="cpu").fast_attention == "bf16"  # auto: a CPU keeps bf16
    assert RuntimeConfig.resolve("m", device="cpu", fast_attention="fp8").fast_attention == "fp8"
    with pytest.raises(ValueError, match="auto, fp8 or bf16"):
        RuntimeConfig.resolve("m", device="cpu", fast_attention="int8")
    assert FP8_ATTENTION.startswith("fp8")
