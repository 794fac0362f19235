"""8-bit self-attention for fast mode on Hopper: the cuDNN frontend's FP8 SDPA as a torch custom op.

Fast mode already runs every linear of the transformer blocks in fp8; at Wan's sequence lengths
(32,760 tokens at 832x480x81, 45,056 at 1024x1024x41) self-attention is most of what is left in
bf16. `Fp8SelfAttention` replaces the attention processor of each block's self-attention: q, k and
v come out of the (fp8) projections, the RMS norms and RoPE as today, are quantized to e4m3 with one
scale per tensor computed on the fly (amax / 448, no calibration), and go to `wanq::sdpa_fp8`, a
custom op around the cuDNN frontend's `sdpa_fp8` graph. Being a registered op, it sits inside the
regionally compiled blocks without a graph break, and the quantization around it is ordinary tensor
code that inductor fuses with the norms and RoPE before it and with the output projection's own
fp8 activation cast after it.

The output scale needs no second pass: attention outputs are convex combinations of rows of v, so
|o| <= max|v| and v's scale is a safe output scale (o = o8 * scale_v). Cross-attention (512 text
tokens) stays in bf16. Where the frontend is missing or the card is not Hopper, fast mode keeps
bf16 cuDNN attention, and every output's record says which attention ran (`attention`).

On the CPU the op has a reference implementation (dequantize, attention in float, e4m3 output),
so the processor and the compiled graph are tested without a GPU.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite e4m3 value
FP8_ATTENTION = "fp8 (cuDNN frontend sdpa_fp8, per-tensor e4m3 scales)"
BF16_ATTENTION = "bf16 (cuDNN SDPA)"


def fp8_attention_missing(device: str) -> str | None:
    """Why this device cannot run 8-bit attention (None when it can): a Hopper card (compute
    capability 9.x, which the FP8 SDPA forward requires) and the `cudnn` frontend package."""
    if not device.startswith("cuda"):
        return "not a CUDA device"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if major != 9:
        return f"compute capability {major}.{minor} (the FP8 SDPA forward needs Hopper, 9.x)"
    try:
        import cudnn  # noqa: F401  (nvidia-cudnn-frontend)
    except ImportError:
        return "the nvidia-cudnn-frontend package is not installed"
    return None


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`x` in e4m3 with one scale for the whole tensor, and that scale (float32, one element):
    x ~= x8 * scale."""
    scale = x.abs().amax().float().clamp(min=1e-6) / E4M3_MAX
    return (x.float() / scale).to(E4M3), scale.reshape(1)


@torch.library.custom_op("wanq::sdpa_fp8", mutates_args=())
def sdpa_fp8(q: Tensor, k: Tensor, v: Tensor, scale_q: Tensor, scale_k: Tensor, scale_v: Tensor) -> Tensor:
    """Attention over e4m3 q, k, v laid out (batch, tokens, heads, head_dim), with their scales; the
    output in e4m3 in the same layout, scaled like v (o ~= out * scale_v)."""
    if q.is_cuda:
        return _CudnnSdpa.for_shape(tuple(q.shape), q.device).run(q, k, v, scale_q, scale_k, scale_v)
    return _reference_sdpa_fp8(q, k, v, scale_q, scale_k, scale_v)


@sdpa_fp8.register_fake
def _(q, k, v, scale_q, scale_k, scale_v):
    return torch.empty_like(q)


def _reference_sdpa_fp8(q, k, v, scale_q, scale_k, scale_v) -> torch.Tensor:
    """What the kernel computes, in float: the CPU implementation and the tests' yardstick."""
    q, k, v = ((t.float() * s).transpose(1, 2) for t, s in ((q, scale_q), (k, scale_k), (v, scale_v)))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
    return (out / scale_v).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).contiguous()


def attention_fp8(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Self-attention of bf16 q, k, v (batch, tokens, heads, head_dim) through the 8-bit kernel;
    returns the same layout and dtype."""
    (q8, scale_q), (k8, scale_k), (v8, scale_v) = quantize(query), quantize(key), quantize(value)
    out = torch.ops.wanq.sdpa_fp8(q8.contiguous(), k8.contiguous(), v8.contiguous(), scale_q, scale_k, scale_v)
    return (out.float() * scale_v).to(query.dtype)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as diffusers' WanAttnProcessor applies it (interleaved pairs)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class Fp8SelfAttention:
    """The attention processor of a block's self-attention (`attn1`) in fast mode: diffusers'
    WanAttnProcessor for text-to-video, with the attention itself in 8 bits."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None or attn.add_k_proj is not None:
            raise ValueError("Fp8SelfAttention serves text-to-video self-attention only")
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query, key = _rotary(query, *rotary_emb), _rotary(key, *rotary_emb)
        hidden_states = attention_fp8(query, key, value).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](hidden_states))


def use_fp8_self_attention(transformer: torch.nn.Module) -> int:
    """Give every block's self-attention the 8-bit processor; returns how many were changed."""
    processor = Fp8SelfAttention()  # one instance: the compiled block's guards see the same object in every block
    blocks = list(transformer.blocks)
    for block in blocks:
        block.attn1.set_processor(processor)
    return len(blocks)


class _CudnnSdpa:
    """One built cuDNN frontend FP8 SDPA graph for a (batch, tokens, heads, head_dim) shape on one
    device, with its workspace and constant scales; built on first use of the shape."""

    @staticmethod
    @functools.cache
    def for_shape(shape: tuple[int, int, int, int], device: torch.device) -> _CudnnSdpa:
        return _CudnnSdpa(shape, device)

    def __init__(self, shape, device):
        import cudnn

        self.cudnn = cudnn
        batch, tokens, heads, dim = shape
        self.handle = _handle(device)
        e4m3, fp32 = cudnn.data_type.FP8_E4M3, cudnn.data_type.FLOAT
        graph = cudnn.pygraph(
            io_data_type=e4m3, intermediate_data_type=fp32, compute_data_type=fp32, handle=self.handle
        )
        # Logical (b, h, s, d) over memory laid out (b, s, h, d): no transposes around the kernel.
        dims, strides = (batch, heads, tokens, dim), (tokens * heads * dim, dim, heads * dim, 1)
        q, k, v = (graph.tensor(name=n, dim=dims, stride=strides, data_type=e4m3) for n in "qkv")
        one = {"dim": (1, 1, 1, 1), "stride": (1, 1, 1, 1), "data_type": fp32}
        names = ("descale_q", "descale_k", "descale_v", "descale_s", "scale_s", "scale_o")
        descale_q, descale_k, descale_v, descale_s, scale_s, scale_o = (graph.tensor(name=n, **one) for n in names)
        out, _, amax_s, amax_o = graph.sdpa_fp8(
            q=q,
            k=k,
            v=v,
            descale_q=descale_q,
            descale_k=descale_k,
            descale_v=descale_v,
            descale_s=descale_s,
            scale_s=scale_s,
            scale_o=scale_o,
            attn_scale=1.0 / math.sqrt(dim),
            use_causal_mask=False,
            generate_stats=False,
        )
        out.set_output(True).set_dim(dims).set_stride(strides).set_data_type(e4m3)
        for amax in (amax_s, amax_o):
            amax.set_output(True).set_dim((1, 1, 1, 1)).set_stride((1, 1, 1, 1)).set_data_type(fp32)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        graph.build_plans()
        self.graph, self.tensors = graph, (q, k, v, descale_q, descale_k, descale_v, scale_o, out, amax_s, amax_o)
        # Probabilities are in [0, 1]: scaled by 448 they use e4m3's whole range.
        self.scale_s = torch.full((1, 1, 1, 1), E4M3_MAX, device=device)
        self.descale_s = 1.0 / self.scale_s
        self.descale_s_tensor, self.scale_s_tensor = descale_s, scale_s
        self.amax = torch.empty(2, 1, 1, 1, device=device)
        self.workspace = torch.empty(graph.get_workspace_size(), device=device, dtype=torch.uint8)
        log.info("built the FP8 SDPA graph for %s on %s", shape, device)

    def run(self, q, k, v, scale_q, scale_k, scale_v) -> torch.Tensor:
        tq, tk, tv, tdq, tdk, tdv, tso, tout, tamax_s, tamax_o = self.tensors
        out = torch.empty_like(q)
        view = (1, 1, 1, 1)
        pack = {
            tq: q,
            tk: k,
            tv: v,
            tdq: scale_q.reshape(view),
            tdk: scale_k.reshape(view),
            tdv: scale_v.reshape(view),
            self.descale_s_tensor: self.descale_s,
            self.scale_s_tensor: self.scale_s,
            tso: (1.0 / scale_v).reshape(view),  # the output in v's scale
            tout: out,
            tamax_s: self.amax[0:1],
            tamax_o: self.amax[1:2],
        }
        self.cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream(q.device).cuda_stream)
        self.graph.execute(pack, self.workspace, handle=self.handle)
        return out


@functools.cache
def _handle(device: torch.device):
    import cudnn

    return cudnn.create_handle()
