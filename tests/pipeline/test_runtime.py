"""The warm runtime renders what a plain diffusers WanPipeline call renders (tiny model, CPU, float32): bit for bit
with peft's adapters (the default), within rounding with the stack adapter of WAN_EXACT_COMPILE."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

from tests.conftest import SMALL, TINY_SHAPE
from workers.pipeline.checkpoints import write_aitoolkit_lora, write_kohya_lora
from workers.pipeline.config import RuntimeConfig
from workers.pipeline.params import resolve_prompt
from workers.pipeline.runtime import LoraSpec, RenderCanceled, WanRuntime, pick_scheduler
from workers.pipeline.video import to_uint8

PARAMS = resolve_prompt({"prompt": "sks a photo of a person", "neg": "blurry", **SMALL, "guidance_scale": 4.0}, index=0)


def spec(path, multiplier, version="0.9.4"):
    return LoraSpec(str(path), sha256=path.stem.ljust(64, "0"), multiplier=multiplier, software_version=version)


def assert_within_rounding(frames, expected):
    """Equal up to one level on a few values: the same math summed in another order."""
    difference = np.abs(frames.astype(int) - expected)
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-4


def plain_diffusers(model, loras, scheduler="euler"):
    """What a user would write by hand: fresh pipeline, load_lora_weights + set_adapters, CPU generator."""
    pipe = WanPipeline.from_pretrained(model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    if scheduler == "euler":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0, num_train_timesteps=1000, use_dynamic_shifting=False
        )
    for i, (path, _) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"l{i}")
    if loras:
        pipe.set_adapters([f"l{i}" for i in range(len(loras))], [w for _, w in loras])
    out = pipe(
        prompt=PARAMS.prompt,
        negative_prompt=PARAMS.neg,
        height=PARAMS.height,
        width=PARAMS.width,
        num_frames=PARAMS.num_frames,
        num_inference_steps=PARAMS.sample_steps,
        guidance_scale=PARAMS.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(PARAMS.seed),
        output_type="np",
    )
    return to_uint8(out.frames[0])


@pytest.fixture(scope="module")
def runtime(tiny_model):
    return WanRuntime(str(tiny_model), device="cpu")


@pytest.fixture(scope="module")
def stacked(tiny_model):
    return WanRuntime(str(tiny_model), device="cpu", exact_compile=True)  # what a compiled CUDA worker runs


@pytest.mark.parametrize("stack", [[("a", 1.0)], [("a", -1.0)], [("a", 0.5), ("b", 0.7)], []])
def test_stack_adapter_matches_plain_diffusers_within_rounding(stacked, tiny_model, lora_files, stack):
    loras = [(lora_files[name], weight) for name, weight in stack]
    result = stacked.render(PARAMS, loras=[spec(path, weight) for path, weight in loras], scheduler="euler")
    assert result.lora_math == "stack"  # the output record says so
    assert_within_rounding(result.frames, plain_diffusers(tiny_model, loras))


def test_a_failed_stack_rebuild_is_redone_on_the_next_job(tiny_model, lora_files, tmp_path, monkeypatch):
    """Growing the stack adapter can run out of memory half-way; nothing stale may render after it."""
    runtime = WanRuntime(str(tiny_model), device="cpu", exact_compile=True)
    a = spec(lora_files["a"], 0.8)
    runtime.render(PARAMS, loras=[a])
    wide = write_aitoolkit_lora(tmp_path / "wide.safetensors", shape=TINY_SHAPE, rank=40, seed=7)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(runtime.pipe.transformer, "add_adapter", out_of_memory)
    with pytest.raises(RuntimeError, match="injected"):
        runtime.render(PARAMS, loras=[spec(wide, 1.0)])
    monkeypatch.undo()
    fresh = WanRuntime(str(tiny_model), device="cpu", exact_compile=True).render(PARAMS, loras=[a]).frames
    assert np.array_equal(runtime.render(PARAMS, loras=[a]).frames, fresh)


def test_compiled_blocks_never_recompile_for_a_new_lora_stack_or_multiplier(tiny_model, lora_files):
    """What WAN_EXACT_COMPILE buys: after the first job, LoRAs never seen before, other multipliers
    and other stacks reuse the compiled blocks (dynamo's eager backend: the same guards, no codegen)."""
    from torch._dynamo.utils import counters

    runtime = WanRuntime(str(tiny_model), device="cpu", exact_compile=True).load()
    runtime.pipe.transformer.compile_repeated_blocks(backend="eager", fullgraph=True, dynamic=False)
    runtime.render(PARAMS)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0
    a, b = lora_files["a"], lora_files["b"]
    for loras in ([spec(a, 1.0)], [spec(b, 0.7)], [spec(a, 0.3), spec(b, 1.0)], [], [spec(a, -1.0)]):
        runtime.render(PARAMS, loras=loras)
    cached = runtime.render(PARAMS, loras=[spec(a, 1.0)], step_cache=0.5)  # its hooks run the blocks eagerly
    assert cached.step_cache == 0.5
    assert counters["stats"]["unique_graphs"] == graphs
    assert runtime.resident_adapters and list(runtime.pipe.transformer.peft_config) == ["stack"]


def test_a_worker_warmed_up_for_both_speeds_renders_exact_after_fast_without_compiling(tiny_model, tmp_path):
    """Exact and fast blocks share dynamo's cache (the same code); the warm-up compiles both, and a draft
    job (a kohya step-distill LoRA within the stack's first rank bucket), fast then exact, compiles nothing
    more. (A stack of more total rank than the bucket compiles once for its new bucket, fast mode or not.)"""
    from torch._dynamo.utils import counters

    config = RuntimeConfig.resolve(str(tiny_model), device="cpu", exact_compile=True)
    runtime = WanRuntime(replace(config, compile_exact=True)).load()  # warms up both speeds, as on CUDA
    for model in (runtime.pipe.transformer, runtime.fast_transformer().model):
        model.compile_repeated_blocks(backend="eager", fullgraph=True, dynamic=False)
    runtime.warm_up([(PARAMS.width, PARAMS.height, PARAMS.num_frames)])
    graphs = counters["stats"]["unique_graphs"]
    distill = spec(write_kohya_lora(tmp_path / "distill.safetensors", shape=TINY_SHAPE, rank=16), 1.0)
    draft = replace(PARAMS, sample_steps=2, guidance_scale=1.0)
    for speed in ("fast", "exact"):
        assert runtime.render(draft, loras=[distill], scheduler="distill", speed=speed).speed == speed
    assert counters["stats"]["unique_graphs"] == graphs


def test_stack_adapter_is_filled_in_place_and_grows_only(stacked, lora_files, tmp_path):
    """Compiled blocks stay valid while the stack adapter keeps its tensors: new LoRAs, multipliers and
    stacks only copy values; a stack of more total rank than the bucket rebuilds it once, larger."""
    stacked.render(PARAMS, loras=[spec(lora_files["a"], 1.0)])
    layer = stacked.pipe.transformer.blocks[0].attn1.to_q
    tensors = (layer.lora_A["stack"].weight, layer.lora_B["stack"].weight)
    for loras in ([spec(lora_files["b"], 0.7)], [], [spec(lora_files["a"], 0.3), spec(lora_files["b"], 1.0)]):
        stacked.render(PARAMS, loras=loras)
        assert (layer.lora_A["stack"].weight, layer.lora_B["stack"].weight) == tensors
        assert layer.active_adapters == ["stack"]
    wide = write_aitoolkit_lora(tmp_path / "wide.safetensors", shape=TINY_SHAPE, rank=40, seed=7)
    stacked.render(PARAMS, loras=[spec(wide, 1.0)])
    assert layer.lora_A["stack"].weight.shape[0] == 64
    stacked.render(PARAMS, loras=[spec(lora_files["a"], 1.0)])
    assert layer.lora_A["stack"].weight.shape[0] == 64


@pytest.mark.parametrize("multiplier", [1.0, 0.5, -1.0])
def test_single_lora_matches_plain_diffusers(runtime, tiny_model, lora_files, multiplier):
    frames = runtime.render(PARAMS, loras=[spec(lora_files["a"], multiplier)]).frames
    assert np.array_equal(frames, plain_diffusers(tiny_model, [(lora_files["a"], multiplier)]))


def test_stack_of_two_matches_plain_diffusers(runtime, tiny_model, lora_files):
    stack = [spec(lora_files["a"], 0.7), spec(lora_files["b"], -0.4, version="0.9.2")]
    frames = runtime.render(PARAMS, loras=stack).frames
    expected = plain_diffusers(tiny_model, [(lora_files["a"], 0.7), (lora_files["b"], -0.4)])
    assert np.array_equal(frames, expected)


def test_lora_changes_the_frames(runtime, lora_files):
    without = runtime.render(PARAMS, scheduler="euler").frames
    with_lora = runtime.render(PARAMS, loras=[spec(lora_files["a"], 1.0)]).frames
    assert not np.array_equal(without, with_lora)


def test_switching_never_leaks_a_scale_or_reloads_the_base(tiny_model, lora_files):
    a, b = lora_files["a"], lora_files["b"]
    sequence = [(a, 0.5), (a, 1.0), (b, 1.0), (a, 1.0)]
    runtime = WanRuntime(str(tiny_model), device="cpu")
    runtime.load()
    base = runtime.pipe.transformer
    for path, weight in sequence:
        frames = runtime.render(PARAMS, loras=[spec(path, weight)], scheduler="euler").frames
        fresh = (
            WanRuntime(str(tiny_model), device="cpu")
            .render(PARAMS, loras=[spec(path, weight)], scheduler="euler")
            .frames
        )
        assert np.array_equal(frames, fresh), (path.stem, weight)
    assert runtime.pipe.transformer is base
    assert sorted(runtime.resident_adapters) == sorted(WanRuntime.adapter_name(spec(p, 1).sha256) for p in (a, b))


@pytest.mark.parametrize("exact_compile", [False, True])
def test_least_recently_used_adapter_is_unloaded_over_budget(tiny_model, lora_files, exact_compile):
    a, b = lora_files["a"], lora_files["b"]
    runtime = WanRuntime(str(tiny_model), device="cpu", lora_budget_bytes=a.stat().st_size, exact_compile=exact_compile)
    runtime.render(PARAMS, loras=[spec(a, 1.0)])
    runtime.render(PARAMS, loras=[spec(b, 1.0)])
    assert runtime.resident_adapters == [WanRuntime.adapter_name(spec(b, 1).sha256)]
    frames = runtime.render(PARAMS, loras=[spec(a, 0.5)], scheduler="euler").frames
    if exact_compile:
        assert list(runtime.loras.stacks[0].sources) == [WanRuntime.adapter_name(spec(a, 1).sha256)]
        assert_within_rounding(frames, plain_diffusers(tiny_model, [(a, 0.5)]))
    else:
        assert np.array_equal(frames, plain_diffusers(tiny_model, [(a, 0.5)]))


def test_checkpoint_scheduler_without_lora_matches_plain_diffusers(runtime, tiny_model):
    frames = runtime.render(PARAMS).frames
    assert np.array_equal(frames, plain_diffusers(tiny_model, [], scheduler="checkpoint"))


def test_same_settings_give_the_same_frames(runtime, lora_files):
    first = runtime.render(PARAMS, loras=[spec(lora_files["a"], 0.8)]).frames
    runtime.render(PARAMS, loras=[spec(lora_files["b"], 1.0)])
    assert np.array_equal(first, runtime.render(PARAMS, loras=[spec(lora_files["a"], 0.8)]).frames)


def render_canceled_at_once(runtime) -> list[int]:
    """Render PARAMS with a step callback that cancels; the steps the callback saw."""
    steps = []

    def cancel(done, total):
        steps.append(done)
        raise RenderCanceled()

    with pytest.raises(RenderCanceled):
        runtime.render(PARAMS, on_step=cancel)
    return steps


def test_cancel_from_the_step_callback_stops_the_render(runtime):
    assert render_canceled_at_once(runtime) == [1]


@pytest.mark.parametrize(
    "choice,version,expected",
    [
        ("auto", "0.9.4", "euler"),
        ("auto", "1.2.0", "euler"),
        ("auto", "0.9.2", "unipc"),
        ("auto", "0.8.0", "unipc"),
        ("auto", "0.9.3", "checkpoint"),
        ("auto", None, "checkpoint"),
        ("euler", "0.9.2", "euler"),
        ("unipc", "0.9.4", "unipc"),
    ],
)
def test_scheduler_choice(choice, version, expected):
    loras = [LoraSpec("x", "0" * 64, 1.0, version)] if version else []
    assert pick_scheduler(choice, loras) == expected


def test_scheduler_timesteps_match_ai_toolkit(runtime):
    euler, unipc = runtime._schedulers["euler"], runtime._schedulers["unipc"]
    euler.set_timesteps(25)
    unipc.set_timesteps(25)
    assert euler.timesteps[:3].tolist() == pytest.approx([1000.0, 985.758, 970.681], abs=1e-3)
    assert euler.timesteps[-1].item() == pytest.approx(8.929, abs=1e-3)
    assert unipc.timesteps[:3].tolist() == [999, 986, 971] and unipc.timesteps[-1].item() == 113


def test_step_cache_is_opt_in_per_render_and_leaves_exact_renders_exact(tiny_model, lora_files):
    runtime = WanRuntime(str(tiny_model), device="cpu")
    params = resolve_prompt({"prompt": "a cat", **SMALL, "sample_steps": 12}, index=0)
    exact = runtime.render(params).frames
    cached = runtime.render(params, step_cache=1.0).frames  # threshold 1: every step after the first reuses
    assert not np.array_equal(exact, cached)
    assert not runtime.pipe.transformer.is_cache_enabled
    assert np.array_equal(runtime.render(params).frames, exact)


@pytest.mark.parametrize("exact_compile", [False, True])
def test_cfg_on_a_second_device_gives_the_same_frames(tiny_model, lora_files, exact_compile):
    """The CFG-parallel loop (here with both "devices" on the CPU) is WanPipeline's math exactly;
    with the stack adapter, the replica carries its own."""
    single = WanRuntime(str(tiny_model), device="cpu", exact_compile=exact_compile)
    split = WanRuntime(str(tiny_model), device="cpu", cfg_device="cpu", exact_compile=exact_compile)
    stack = [spec(lora_files["a"], 0.7), spec(lora_files["b"], -0.4, version="0.9.2")]
    for loras in (stack, [spec(lora_files["b"], 1.0, version="0.9.2")], []):
        steps = []
        frames = split.render(PARAMS, loras=loras, on_step=lambda done, total: steps.append(done)).frames
        assert np.array_equal(frames, single.render(PARAMS, loras=loras).frames)
        assert steps == list(range(1, PARAMS.sample_steps + 1))


@pytest.mark.parametrize("width,height,frames", [(1024, 1024, 1), (832, 480, 5), (1280, 720, 1)])
def test_the_default_checkpoint_renders_sizes_past_512_px(runtime, width, height, frames):
    """The tiny checkpoint `make demo` writes has the 14B's rotary range, so the API's sizes render on it."""
    params = resolve_prompt(
        {
            "prompt": "x",
            "width": width,
            "height": height,
            "num_frames": frames,
            "sample_steps": 1,
            "guidance_scale": 1.0,
        },
        index=0,
    )
    assert runtime.render(params).frames.shape == (frames, height, width, 3)
