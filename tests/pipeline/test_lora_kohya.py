"""ComfyUI/kohya-style LoRAs (the format step-distill LoRAs ship in): `lora_down`/`lora_up` with `.alpha`,
`diff_b` bias deltas and `diff` full deltas. The upload check accepts them and names what cannot apply;
the worker's loading path gives what diffusers' own converter gives, applies every delta at exactly its
multiplier (exact adapters, the stack adapter, fast mode's merged copy) and stacks with ai-toolkit LoRAs."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from safetensors.torch import load_file, save_file

from tests.conftest import SMALL, TINY_SHAPE
from tests.pipeline.test_runtime import PARAMS
from workers.pipeline.checkpoints import write_aitoolkit_lora, write_kohya_lora
from workers.pipeline.fast import fp8_rowwise_round
from workers.pipeline.lora_deltas import diffusers_names
from workers.pipeline.lora_files import LoraFileError, check_compatible, inspect_lora
from workers.pipeline.params import resolve_prompt
from workers.pipeline.residency import LoraResidency, LoraSpec, adapter_name
from workers.pipeline.runtime import DISTILL_SHIFT, DistillScheduler, WanRuntime
from workers.pipeline.video import to_uint8


@pytest.fixture(scope="module")
def lightx2v_like(tmp_path_factory):
    """As LightX2V ships its LoRAs: factors with alpha (here half the rank), a diff_b per linear, zero norm diffs."""
    return write_kohya_lora(tmp_path_factory.mktemp("kohya") / "distill.safetensors", shape=TINY_SHAPE, seed=11)


@pytest.fixture(scope="module")
def full_deltas(tmp_path_factory):
    """Non-zero norm deltas and deltas outside the blocks' linears (which diffusers' converter drops)."""
    return write_kohya_lora(
        tmp_path_factory.mktemp("kohya") / "deltas.safetensors",
        shape=TINY_SHAPE,
        seed=12,
        scale=0.2,
        norm_deltas="random",
        outside=True,
    )


@pytest.fixture(scope="module")
def aitoolkit(tmp_path_factory):
    return write_aitoolkit_lora(tmp_path_factory.mktemp("aitk") / "style.safetensors", shape=TINY_SHAPE, seed=13)


def kohya_spec(path, multiplier):
    return LoraSpec(str(path), sha256=path.stem.ljust(64, "0"), multiplier=multiplier)


def pipeline(tiny_model):
    pipe = WanPipeline.from_pretrained(str(tiny_model), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def forward(transformer) -> torch.Tensor:
    """One transformer call on fixed random input (a latent video, a time, text embeddings)."""
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 3, 8, 8, generator=gen)
    text = torch.randn(1, 7, 32, generator=gen)
    with torch.no_grad():
        return transformer(latents, torch.tensor([750.0]), text, return_dict=False)[0]


def expected_parameters(tiny_model, stack) -> dict[str, torch.Tensor]:
    """The transformer's parameters with a stack merged by hand from the files, in float64: each linear's
    weight + m * alpha / rank * up @ down (alpha = rank where the file has none), bias + m * diff_b, every
    other delta added at m."""
    base = WanTransformer3DModel.from_pretrained(str(tiny_model), subfolder="transformer", dtype=torch.float32)
    params = {name: p.detach().double().clone() for name, p in base.named_parameters()}
    for path, multiplier in stack:
        state = {key.removeprefix("diffusion_model."): t.double() for key, t in load_file(str(path)).items()}
        layers = {key.rsplit(".lora_", 1)[0] for key in state if ".lora_" in key}
        names = diffusers_names([f"{layer}.weight" for layer in layers] + [f"{layer}.bias" for layer in layers])
        for layer in layers:
            down = state.get(f"{layer}.lora_down.weight", state.get(f"{layer}.lora_A.weight"))
            up = state.get(f"{layer}.lora_up.weight", state.get(f"{layer}.lora_B.weight"))
            alpha = state[f"{layer}.alpha"].item() if f"{layer}.alpha" in state else down.shape[0]
            params[names[f"{layer}.weight"]] += multiplier * alpha / down.shape[0] * (up @ down)
            if f"{layer}.diff_b" in state:
                params[names[f"{layer}.bias"]] += multiplier * state[f"{layer}.diff_b"]
        deltas = {
            key: t
            for key, t in state.items()
            if key.endswith((".diff", ".diff_b")) and key.rsplit(".", 1)[0] not in layers
        }
        originals = {
            key: (
                key[:-7] + ".bias" if key.endswith(".diff_b") else key[:-5] + ("" if "modulation" in key else ".weight")
            )
            for key in deltas
        }
        names = diffusers_names(list(originals.values()))
        for key, delta in deltas.items():
            params[names[originals[key]]] += multiplier * delta
    return params


def effective_parameters(transformer) -> dict[str, torch.Tensor]:
    """What the transformer computes with now, merged in float64: its parameters plus each active peft
    adapter's scaling * B @ A (and scaling * lora bias)."""
    params = {}
    for name, module in transformer.named_modules():
        if hasattr(module, "get_base_layer") and module.active_adapters:
            base = module.get_base_layer()
            weight, bias = base.weight.detach().double().clone(), base.bias.detach().double().clone()
            for adapter in [a for a in module.active_adapters if a in module.lora_A]:
                scaling = module.scaling[adapter]
                weight += scaling * (module.lora_B[adapter].weight.double() @ module.lora_A[adapter].weight.double())
                if module.lora_B[adapter].bias is not None:
                    bias += scaling * module.lora_B[adapter].bias.double()
            params[f"{name}.weight"], params[f"{name}.bias"] = weight, bias
    for name, param in transformer.named_parameters():
        if ".lora_" not in name:
            params.setdefault(name.replace(".base_layer", ""), param.detach().double())
    return params


def assert_parameters_equal(actual: dict, expected: dict, atol=1e-6):
    assert actual.keys() >= expected.keys()
    for name, value in expected.items():
        assert torch.allclose(actual[name], value, rtol=0, atol=atol), name


# -- the upload check ---------------------------------------------------------------------------------


def test_the_upload_check_accepts_the_format(lightx2v_like, full_deltas):
    for path in (lightx2v_like, full_deltas):
        info = inspect_lora(path)
        assert (info.key_format, info.rank, info.num_blocks, info.hidden_size, info.ffn_dim) == ("kohya", 4, 2, 24, 32)
        check_compatible(info, shape=TINY_SHAPE, model_id="tiny")


def attention_only(tmp_path, deltas: dict[str, torch.Tensor]) -> Path:
    """A kohya LoRA for the tiny model with factors on the attention layers only (so the file itself tells no
    feed-forward size) and full deltas {key after "diffusion_model.": tensor}."""
    kohya = load_file(str(write_kohya_lora(tmp_path / "kohya.safetensors", shape=TINY_SHAPE, norm_deltas=None)))
    tensors = {key: t for key, t in kohya.items() if ".ffn." not in key}
    save_file(
        {**tensors, **{f"diffusion_model.{key}": t for key, t in deltas.items()}}, str(tmp_path / "a.safetensors")
    )
    return tmp_path / "a.safetensors"


# A full delta on every kind of parameter one may change, and that parameter's original Wan name.
EVERY_DELTA = {
    "blocks.0.self_attn.q.diff": "blocks.0.self_attn.q.weight",
    "blocks.0.cross_attn.o.diff_b": "blocks.0.cross_attn.o.bias",
    "blocks.1.ffn.0.diff_b": "blocks.1.ffn.0.bias",
    "blocks.1.ffn.2.diff": "blocks.1.ffn.2.weight",
    "blocks.0.self_attn.norm_k.diff": "blocks.0.self_attn.norm_k.weight",
    "blocks.1.norm3.diff_b": "blocks.1.norm3.bias",
    "blocks.1.modulation.diff": "blocks.1.modulation",
    "head.head.diff": "head.head.weight",
    "head.head.diff_b": "head.head.bias",
    "head.modulation.diff": "head.modulation",
    "patch_embedding.diff": "patch_embedding.weight",
    "patch_embedding.diff_b": "patch_embedding.bias",
    "text_embedding.0.diff": "text_embedding.0.weight",
    "time_embedding.0.diff": "time_embedding.0.weight",
    "text_embedding.2.diff_b": "text_embedding.2.bias",
    "time_projection.1.diff": "time_projection.1.weight",
    "time_projection.1.diff_b": "time_projection.1.bias",
}


def test_the_upload_check_takes_a_delta_of_each_parameters_shape(tmp_path, tiny_model):
    """At the shapes of the real tiny transformer's parameters, every full delta is accepted."""
    model = WanTransformer3DModel.from_pretrained(str(tiny_model), subfolder="transformer")
    params, names = dict(model.named_parameters()), diffusers_names(list(EVERY_DELTA.values()))
    deltas = {key: torch.zeros(params[names[original]].shape) for key, original in EVERY_DELTA.items()}
    check_compatible(inspect_lora(attention_only(tmp_path, deltas)), shape=TINY_SHAPE, model_id="tiny")


@pytest.mark.parametrize(
    "key,tensor,expected",
    [
        ("blocks.0.ffn.0.diff_b", torch.zeros(7), [32]),
        ("blocks.1.ffn.2.diff", torch.zeros(24, 7), [24, 32]),
        ("head.head.diff", torch.zeros(3, 24), [64, 24]),
        ("head.head.diff_b", torch.zeros(3), [64]),
        ("time_projection.1.diff_b", torch.zeros(11), [144]),
        ("patch_embedding.diff", torch.zeros(24, 16, 1, 4, 4), [24, 16, 1, 2, 2]),
        ("text_embedding.0.diff", torch.zeros(24, 4096), [24, 32]),
        ("time_embedding.0.diff", torch.zeros(24, 32), [24, 256]),
    ],
)
def test_the_upload_check_refuses_a_delta_of_another_shape_than_the_models(tmp_path, key, tensor, expected):
    """Sizes the file itself does not tell (no feed-forward factors, the head, the embeddings) are the
    model's: a job could never load such a delta."""
    info = inspect_lora(attention_only(tmp_path, {key: tensor}))
    with pytest.raises(LoraFileError) as refused:
        check_compatible(info, shape=TINY_SHAPE, model_id="tiny")
    assert refused.value.code == "LORA_MODEL_MISMATCH"
    assert refused.value.message == (
        f"Full delta 'diffusion_model.{key}' has shape {list(tensor.shape)}; the parameter it changes in tiny "
        f"has shape {expected}."
    )


@pytest.mark.parametrize(
    "key,tensor,code,words",
    [
        ("blocks.0.norm1.diff", torch.zeros(24), "LORA_MODEL_MISMATCH", "does not have"),
        ("blocks.0.self_attn.norm_q.diff_b", torch.zeros(24), "LORA_MODEL_MISMATCH", "does not have"),
        ("blocks.0.cross_attn.k_img.diff_b", torch.zeros(24), "LORA_MODEL_MISMATCH", "does not have"),
        ("blocks.0.norm3.diff", torch.zeros(48), "LORA_MODEL_MISMATCH", "shape [48]"),
        ("blocks.1.ffn.0.diff_b", torch.zeros(24), "LORA_MODEL_MISMATCH", "shape [24]"),
        ("blocks.0.modulation.diff", torch.zeros(6, 24), "LORA_MODEL_MISMATCH", "[1, 6, 24]"),
        ("blocks.0.norm3.diff", torch.zeros(24, dtype=torch.int32), "LORA_HEADER_INVALID", "floating-point"),
    ],
)
def test_the_upload_check_refuses_deltas_that_cannot_apply(tmp_path, lightx2v_like, key, tensor, code, words):
    tensors = {**load_file(str(lightx2v_like)), f"diffusion_model.{key}": tensor}
    save_file(tensors, str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoraFileError) as refused:
        check_compatible(inspect_lora(tmp_path / "bad.safetensors"), shape=TINY_SHAPE, model_id="tiny")
    assert refused.value.code == code and words in refused.value.message


def test_a_delta_past_the_models_blocks_is_refused_before_a_job_loads_it(tmp_path, lightx2v_like):
    tensors = {**load_file(str(lightx2v_like)), "diffusion_model.blocks.7.norm3.diff": torch.zeros(24)}
    save_file(tensors, str(tmp_path / "deep.safetensors"))
    info = inspect_lora(tmp_path / "deep.safetensors")
    with pytest.raises(LoraFileError) as refused:
        check_compatible(info, shape=TINY_SHAPE, model_id="tiny")
    assert refused.value.code == "LORA_MODEL_MISMATCH" and "8 blocks" in refused.value.message


# -- loading: the same as diffusers' converter, every delta at its multiplier ---------------------------


@pytest.mark.parametrize("multiplier", [1.0, 0.6, -0.5])
def test_loading_gives_what_diffusers_converter_gives(tiny_model, lightx2v_like, multiplier):
    """Bit for bit with peft's adapters; within rounding through the stack adapter."""
    reference = pipeline(tiny_model)
    reference.load_lora_weights(str(lightx2v_like.parent), weight_name=lightx2v_like.name, adapter_name="x")
    reference.set_adapters(["x"], [multiplier])
    expected = forward(reference.transformer)
    for stack_adapter in (False, True):
        pipe = pipeline(tiny_model)
        LoraResidency(pipe, stack_adapter=stack_adapter, budget_bytes=2**30).activate(
            [kohya_spec(lightx2v_like, multiplier)]
        )
        if stack_adapter:
            assert torch.allclose(forward(pipe.transformer), expected, rtol=0, atol=1e-5)
        else:
            assert torch.equal(forward(pipe.transformer), expected)


def test_alpha_over_rank_and_bias_deltas_apply_exactly(tiny_model, lightx2v_like):
    state = load_file(str(lightx2v_like))
    alpha, rank = state["diffusion_model.blocks.0.self_attn.q.alpha"].item(), 4
    assert alpha != rank  # so a loader that ignored alpha would fail here
    pipe = pipeline(tiny_model)
    LoraResidency(pipe, stack_adapter=False, budget_bytes=2**30).activate([kohya_spec(lightx2v_like, 0.7)])
    assert_parameters_equal(
        effective_parameters(pipe.transformer), expected_parameters(tiny_model, [(lightx2v_like, 0.7)])
    )


def test_full_deltas_are_added_at_the_multiplier_and_taken_back(tiny_model, full_deltas):
    pipe = pipeline(tiny_model)
    base = {name: p.detach().clone() for name, p in pipe.transformer.named_parameters()}
    residency = LoraResidency(pipe, stack_adapter=False, budget_bytes=2**30)
    for multiplier in (0.8, -1.5):
        residency.activate([kohya_spec(full_deltas, multiplier)])
        expected = expected_parameters(tiny_model, [(full_deltas, multiplier)])
        actual = effective_parameters(pipe.transformer)
        assert_parameters_equal(actual, expected)
        for name in ("blocks.0.norm2.weight", "blocks.1.attn2.norm_k.weight", "scale_shift_table", "proj_out.bias"):
            assert not torch.equal(actual[name].float(), base[name]), name  # the deltas did change them
    residency.activate([])
    for name, param in pipe.transformer.named_parameters():
        if ".lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name  # bit for bit


def test_stacked_with_an_aitoolkit_lora_at_other_multipliers(tiny_model, full_deltas, aitoolkit):
    stack = [(full_deltas, 0.8), (aitoolkit, -0.6)]
    expected = expected_parameters(tiny_model, stack)
    merged = WanTransformer3DModel.from_pretrained(str(tiny_model), subfolder="transformer", dtype=torch.float32)
    merged.load_state_dict({name: value.float() for name, value in expected.items()})
    for stack_adapter in (False, True):
        pipe = pipeline(tiny_model)
        residency = LoraResidency(pipe, stack_adapter=stack_adapter, budget_bytes=2**30)
        residency.activate([kohya_spec(full_deltas, 0.3)])  # another multiplier first: nothing of it may stay
        residency.activate([kohya_spec(path, m) for path, m in stack])
        if not stack_adapter:
            assert_parameters_equal(effective_parameters(pipe.transformer), expected)
        assert torch.allclose(forward(pipe.transformer), forward(merged), rtol=0, atol=1e-5)


def test_fast_mode_merges_every_delta_into_its_copy(tiny_model, full_deltas, aitoolkit):
    runtime = WanRuntime(str(tiny_model), device="cpu")
    for stack in ([(full_deltas, 0.8), (aitoolkit, -0.6)], [(full_deltas, -0.4)], [(aitoolkit, 1.0)]):
        specs = [kohya_spec(path, m) for path, m in stack]
        runtime.activate_loras(specs)
        runtime.merge_fast([(adapter_name(s.sha256), s.multiplier) for s in specs])
        expected = expected_parameters(tiny_model, stack)
        for name, param in runtime.fast.model.named_parameters():
            value = expected[name].float()
            if name.startswith("blocks.") and name.endswith(".weight") and param.dim() == 2:
                value = fp8_rowwise_round(value)  # fast mode's block linears: fp8-rounded, the rest as they are
            assert torch.allclose(param, value, rtol=0, atol=1e-6), (name, [m for _, m in stack])


@pytest.mark.parametrize("exact_compile", [False, True])
def test_the_cfg_replica_takes_the_same_deltas(tiny_model, full_deltas, aitoolkit, exact_compile):
    """With WAN_CFG_DEVICE each step's unconditional pass runs on a copy of the transformer: it holds the
    same factors and full deltas (here both "devices" are the CPU)."""
    single = WanRuntime(str(tiny_model), device="cpu", exact_compile=exact_compile)
    split = WanRuntime(str(tiny_model), device="cpu", cfg_device="cpu", exact_compile=exact_compile)
    for stack in ([(full_deltas, 0.8), (aitoolkit, -0.6)], [(aitoolkit, 1.0)], [(full_deltas, 1.0)]):
        loras = [kohya_spec(path, m) for path, m in stack]
        assert np.array_equal(split.render(PARAMS, loras=loras).frames, single.render(PARAMS, loras=loras).frames)


def test_a_distilled_render_matches_diffusers_with_the_same_lora_and_schedule(tiny_model, lightx2v_like):
    """The draft preset's render (4 steps, guidance 1, the distill scheduler, the step-distill LoRA) is what
    a diffusers WanPipeline with that scheduler and load_lora_weights renders."""
    params = replace(PARAMS, sample_steps=4, guidance_scale=1.0)
    runtime = WanRuntime(str(tiny_model), device="cpu")
    result = runtime.render(params, loras=[kohya_spec(lightx2v_like, 1.0)], scheduler="distill")
    assert result.scheduler == "distill"
    pipe = pipeline(tiny_model)
    pipe.scheduler = DistillScheduler(num_train_timesteps=1000, shift=DISTILL_SHIFT, use_dynamic_shifting=False)
    pipe.load_lora_weights(str(lightx2v_like.parent), weight_name=lightx2v_like.name, adapter_name="x")
    pipe.set_adapters(["x"], [1.0])
    frames = pipe(
        prompt=params.prompt,
        negative_prompt=params.neg,
        height=params.height,
        width=params.width,
        num_frames=params.num_frames,
        num_inference_steps=4,
        guidance_scale=1.0,
        generator=torch.Generator("cpu").manual_seed(params.seed),
        output_type="np",
    ).frames[0]
    assert np.array_equal(result.frames, to_uint8(frames))
    assert not np.array_equal(result.frames, runtime.render(params, scheduler="distill").frames)


def test_a_prompts_m_scales_the_requests_loras_and_leaves_the_draft_lora_at_its_own(
    tiny_model, lightx2v_like, aitoolkit
):
    """ai-toolkit's `--m 0` in a draft job turns the request's own LoRA off; the draft preset's step-distill
    LoRA still renders at its multiplier, and the result says which multipliers ran."""
    params = resolve_prompt(
        {"prompt": "a cat --m 0", **SMALL}, index=0, semantics="ai-toolkit", overrides={"guidance_scale": 1.0}
    )
    runtime = WanRuntime(str(tiny_model), device="cpu")
    draft = replace(kohya_spec(lightx2v_like, 0.9), keep_multiplier=True)
    result = runtime.render(params, loras=[kohya_spec(aitoolkit, 0.6), draft], scheduler="distill")
    assert [lora.multiplier for lora in result.loras] == [0.0, 0.9]
    plain = replace(params, lora_scale=None)
    explicit = [kohya_spec(aitoolkit, 0.0), kohya_spec(lightx2v_like, 0.9)]
    assert np.array_equal(result.frames, runtime.render(plain, loras=explicit, scheduler="distill").frames)
    all_off = [kohya_spec(aitoolkit, 0.0), kohya_spec(lightx2v_like, 0.0)]
    assert not np.array_equal(result.frames, runtime.render(plain, loras=all_off, scheduler="distill").frames)


def test_dropping_the_only_lora_with_deltas_lets_go_of_every_base_copy(tiny_model, full_deltas, aitoolkit):
    """A long-lived worker keeps no copy of a parameter once no resident LoRA changes it."""
    pipe = pipeline(tiny_model)
    residency = LoraResidency(pipe, stack_adapter=False, budget_bytes=aitoolkit.stat().st_size)
    residency.activate([kohya_spec(full_deltas, 0.8)])
    assert residency.deltas[0]._base  # the base of every parameter its deltas changed
    residency.activate([kohya_spec(aitoolkit, 0.5)])  # over the budget: the kohya LoRA is evicted
    assert residency.resident == [adapter_name(kohya_spec(aitoolkit, 0.5).sha256)]
    assert not residency.deltas[0]._base and not residency.deltas[0].sources
    assert_parameters_equal(effective_parameters(pipe.transformer), expected_parameters(tiny_model, [(aitoolkit, 0.5)]))


def test_the_budget_counts_what_full_deltas_hold_on_the_gpu(tiny_model, full_deltas, aitoolkit):
    """A LoRA with full deltas holds them beside a base copy of each parameter they change: more than its
    file, so a budget the two files' sizes would fit evicts it."""
    pipe = pipeline(tiny_model)
    budget = full_deltas.stat().st_size + aitoolkit.stat().st_size
    residency = LoraResidency(pipe, stack_adapter=False, budget_bytes=budget)
    residency.activate([kohya_spec(full_deltas, 0.8)])
    residency.activate([kohya_spec(aitoolkit, 0.5)])
    assert residency.resident == [adapter_name(kohya_spec(aitoolkit, 0.5).sha256)]


def test_a_stack_switch_copies_no_base_again(tiny_model, full_deltas, monkeypatch):
    """A parameter's base is copied the first time a delta reaches it, not at every switch of multipliers."""
    pipe = pipeline(tiny_model)
    residency = LoraResidency(pipe, stack_adapter=False, budget_bytes=2**30)
    residency.activate([kohya_spec(full_deltas, 0.8)])
    bases = dict(residency.deltas[0]._base)
    clones, clone = [], torch.Tensor.clone

    def counted_clone(tensor, *args, **kwargs):
        clones.append(tensor.shape)
        return clone(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "clone", counted_clone)
    residency.activate([kohya_spec(full_deltas, -0.5)])
    assert not clones
    assert all(residency.deltas[0]._base[name] is base for name, base in bases.items())


def test_a_lora_dropped_while_applied_puts_the_base_back_bit_for_bit(tiny_model, full_deltas):
    pipe = pipeline(tiny_model)
    base = {name: p.detach().clone() for name, p in pipe.transformer.named_parameters()}
    residency = LoraResidency(pipe, stack_adapter=False, budget_bytes=2**30)
    spec = kohya_spec(full_deltas, 0.8)
    residency.activate([spec])
    name, deltas = adapter_name(spec.sha256), residency.deltas[0]
    kept = dict(deltas.sources[name])
    deltas.drop(name)
    assert not deltas._base
    for param_name in kept:
        assert torch.equal(dict(pipe.transformer.named_parameters())[param_name], base[param_name]), param_name
    deltas.add(name, kept)  # loaded again: the same stack applies its deltas again
    deltas.activate([(name, 0.8)])
    assert_parameters_equal(
        effective_parameters(pipe.transformer), expected_parameters(tiny_model, [(full_deltas, 0.8)])
    )
