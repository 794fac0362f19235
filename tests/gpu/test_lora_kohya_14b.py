"""On a CUDA machine: a random rank-64 step-distill LoRA of the real Wan 2.1 14B shape, written in the ComfyUI/kohya
form LightX2V ships (`lora_down`/`lora_up` with `.alpha`, `diff_b`, norm `diff`s, deltas outside the blocks),
passes the upload check and loads through the worker's path into a 14B-shaped bf16 transformer, peft adapters and
stack adapter alike, every part at its multiplier. Skipped without CUDA."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file

from workers.pipeline.checkpoints import write_kohya_lora
from workers.pipeline.lora_files import check_compatible, inspect_lora
from workers.pipeline.residency import LoraResidency, LoraSpec
from workers.pipeline.shapes import WAN_14B_TRANSFORMER, WanShape

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SHAPE = WanShape.of(WAN_14B_TRANSFORMER)
MULTIPLIER = 0.8


@pytest.fixture(scope="module")
def lora_14b(tmp_path_factory):
    path = tmp_path_factory.mktemp("kohya14b") / "lightx2v_t2v_14b_rank64.safetensors"
    return write_kohya_lora(
        path, shape=SHAPE, rank=64, seed=5, scale=0.01, norm_deltas="random", outside=True, device="cuda"
    )


def transformer_14b() -> WanTransformer3DModel:
    """The 14B transformer with random weights (the same for every call), in bf16 on the GPU."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.bfloat16)
        with torch.device("cuda"):
            return WanTransformer3DModel(**WAN_14B_TRANSFORMER).eval().requires_grad_(False)
    finally:
        torch.set_default_dtype(default)


def loaded(lora_path, *, stack_adapter: bool):
    model = transformer_14b()
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, transformer=model, scheduler=FlowMatchEulerDiscreteScheduler()
    )
    residency = LoraResidency(pipe, stack_adapter=stack_adapter, budget_bytes=64 * 2**30)
    return model, residency


def forward(model) -> torch.Tensor:
    gen = torch.Generator("cuda").manual_seed(1)
    latents = torch.randn(1, 16, 1, 32, 32, generator=gen, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(1, 16, 4096, generator=gen, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        return model(latents, torch.tensor([750.0], device="cuda"), text, return_dict=False)[0].float()


def test_the_upload_check_takes_the_14b_lora(lora_14b):
    info = inspect_lora(lora_14b)
    assert (info.key_format, info.rank, info.num_blocks, info.hidden_size, info.ffn_dim, info.base_model) == (
        "kohya",
        64,
        40,
        5120,
        13824,
        "wan21_14b",
    )
    check_compatible(info, shape=SHAPE, model_id="wan21_14b")


def test_the_14b_lora_loads_with_every_part_at_its_multiplier(lora_14b):
    state = {key: t.cuda().float() for key, t in load_file(str(lora_14b)).items()}
    spec = LoraSpec(str(lora_14b), sha256="e" * 64, multiplier=MULTIPLIER)
    model, residency = loaded(lora_14b, stack_adapter=False)
    base = {
        name: model.get_parameter(name).detach().clone()
        for name in (
            "blocks.39.norm2.weight",
            "blocks.0.attn2.norm_q.weight",
            "proj_out.weight",
            "blocks.7.scale_shift_table",
        )
    }
    residency.activate([spec])

    # factors: m * alpha / rank * up @ down, plus m * diff_b, on a block's first and last linears
    for original, name in (("blocks.0.self_attn.q", "blocks.0.attn1.to_q"), ("blocks.39.ffn.2", "blocks.39.ffn.net.2")):
        layer, key = model.get_submodule(name), f"diffusion_model.{original}"
        adapter = layer.active_adapters[0]
        delta = layer.scaling[adapter] * (layer.lora_B[adapter].weight.float() @ layer.lora_A[adapter].weight.float())
        scale = MULTIPLIER * state[f"{key}.alpha"].item() / 64
        expected = scale * (state[f"{key}.lora_up.weight"] @ state[f"{key}.lora_down.weight"])
        torch.testing.assert_close(delta, expected, rtol=1e-4, atol=1e-7)
        bias = layer.scaling[adapter] * layer.lora_B[adapter].bias.float()
        torch.testing.assert_close(bias, MULTIPLIER * state[f"{key}.diff_b"], rtol=1e-2, atol=1e-6)

    # full deltas: the parameter itself, base + m * delta in bf16
    for name, key in (
        ("blocks.39.norm2.weight", "blocks.39.norm3.diff"),
        ("blocks.0.attn2.norm_q.weight", "blocks.0.cross_attn.norm_q.diff"),
        ("proj_out.weight", "head.head.diff"),
        ("blocks.7.scale_shift_table", "blocks.7.modulation.diff"),
    ):
        expected = (base[name].float() + MULTIPLIER * state[f"diffusion_model.{key}"]).to(torch.bfloat16)
        assert torch.equal(model.get_parameter(name), expected), name
    exact = forward(model)

    residency.activate([])
    for name, value in base.items():
        assert torch.equal(model.get_parameter(name), value), name  # the base back, bit for bit
    assert not torch.allclose(forward(model), exact)

    del model, residency
    torch.cuda.empty_cache()
    stacked, residency = loaded(lora_14b, stack_adapter=True)
    residency.activate([spec])
    torch.testing.assert_close(forward(stacked), exact, rtol=0.05, atol=0.05)  # bf16, summed in another order
