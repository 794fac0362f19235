"""Fast mode: an fp8 copy of the transformer with the job's LoRA stack merged into its weights.

On the CPU the weights take the same rowwise fp8 rounding (torchao's fp8 kernels need CUDA); the
GPU benchmark measures the real kernels. These tests pin what a user would notice: fast frames
stay close to exact ones, every job gets exactly its own stack and multipliers, and fast jobs
leave exact rendering untouched."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.common import psnr
from tests.pipeline.test_runtime import PARAMS, plain_diffusers, spec
from workers.pipeline.runtime import WanRuntime

CLOSE_DB = 25  # fast vs exact on the tiny random model; identical frames would be infinite


@pytest.fixture(scope="module")
def runtime(tiny_model):
    return WanRuntime(str(tiny_model), device="cpu")


def test_fast_frames_are_close_to_exact_but_not_equal(runtime, lora_files):
    stack = [spec(lora_files["a"], 0.8)]
    exact = runtime.render(PARAMS, loras=stack)
    fast = runtime.render(PARAMS, loras=stack, speed="fast")
    assert (exact.speed, fast.speed) == ("exact", "fast")
    assert not np.array_equal(exact.frames, fast.frames)
    assert psnr(exact.frames, fast.frames) > CLOSE_DB
    assert fast.timings["fast_merge"] > 0


def test_each_fast_job_gets_its_own_stack(runtime, tiny_model, lora_files):
    a, b = spec(lora_files["a"], 1.0), spec(lora_files["b"], -0.5, version="0.9.2")
    sequence = [[a], [a, b], [], [spec(lora_files["a"], 0.3)], [b]]
    rendered = [runtime.render(PARAMS, loras=stack, scheduler="euler", speed="fast").frames for stack in sequence]
    for stack, frames in zip(sequence, rendered):
        fresh = WanRuntime(str(tiny_model), device="cpu").render(PARAMS, loras=stack, scheduler="euler", speed="fast")
        assert np.array_equal(frames, fresh.frames), [lora.multiplier for lora in stack]


def test_fast_jobs_leave_exact_rendering_untouched(runtime, tiny_model, lora_files):
    runtime.render(PARAMS, loras=[spec(lora_files["a"], 1.0), spec(lora_files["b"], 0.5)], speed="fast")
    frames = runtime.render(PARAMS, loras=[spec(lora_files["a"], 0.5)]).frames
    assert np.array_equal(frames, plain_diffusers(tiny_model, [(lora_files["a"], 0.5)]))


def test_fast_jobs_are_the_same_beside_the_exact_stack_adapter(runtime, tiny_model, lora_files):
    """With WAN_EXACT_COMPILE exact jobs run a stack adapter; fast mode merges the named LoRAs all the same."""
    stacked = WanRuntime(str(tiny_model), device="cpu", exact_compile=True)
    stack = [spec(lora_files["a"], 0.6), spec(lora_files["b"], -0.4)]
    stacked.render(PARAMS, loras=stack[:1])  # the stack adapter holds something else meanwhile
    assert np.array_equal(
        stacked.render(PARAMS, loras=stack, speed="fast").frames,
        runtime.render(PARAMS, loras=stack, speed="fast").frames,
    )


def test_worker_without_fast_mode_renders_exactly_and_says_so(tiny_model, lora_files):
    runtime = WanRuntime(str(tiny_model), device="cpu", fast_mode=False)  # WAN_FAST_MODE=0, or low-memory mode
    result = runtime.render(PARAMS, loras=[spec(lora_files["a"], 1.0)], speed="fast")
    assert result.speed == "exact" and runtime.fast is None
    assert np.array_equal(result.frames, plain_diffusers(tiny_model, [(lora_files["a"], 1.0)]))


def test_lora_bias_deltas_are_merged_too(runtime, lora_files, tmp_path):
    """`diff_b` keys (a bias delta per layer, as musubi and kohya write) land in the fp8 copy as well."""
    text_dim = runtime.load().pipe.transformer.config.text_dim
    tensors = load_file(str(lora_files["a"]))
    for key in [k for k in tensors if k.endswith(".lora_B.weight")]:
        tensors[key.replace(".lora_B.weight", ".diff_b")] = torch.full((tensors[key].shape[0],), 0.5)
    path = tmp_path / "with_bias" / "with_bias.safetensors"
    path.parent.mkdir()
    save_file(tensors, str(path))
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "hidden_states": torch.randn(1, 16, 3, 16, 16, generator=gen),
        "timestep": torch.tensor([500.0]),
        "encoder_hidden_states": torch.randn(1, 512, text_dim, generator=gen),
    }

    def forward(model):
        with torch.inference_mode():
            return model(**inputs, return_dict=False)[0]

    outputs = {}
    for lora in (spec(lora_files["a"], 1.0), spec(path, 1.0)):
        runtime.activate_loras([lora])
        runtime.merge_fast([(runtime.adapter_name(lora.sha256), 1.0)])
        outputs[lora.path] = forward(runtime.pipe.transformer), forward(runtime.fast.model)
    (exact_plain, _), (exact_bias, fast_bias) = outputs.values()
    assert (exact_bias - exact_plain).norm() > 0.2 * exact_plain.norm()  # the bias delta matters
    assert (fast_bias - exact_bias).norm() < 0.05 * exact_bias.norm()


def test_warm_up_builds_fast_mode_before_any_job(tiny_model):
    runtime = WanRuntime(str(tiny_model), device="cpu")
    assert runtime.warm_up([(64, 64, 5), (96, 64, 5)]) > 0 and runtime.fast is not None
    assert runtime.fast.stack == ()  # no LoRA merged in by the warm-up
    assert WanRuntime(str(tiny_model), device="cpu", fast_mode=False).warm_up([(64, 64, 5)]) == 0.0


def test_a_merge_cut_short_is_redone_whole(tiny_model, lora_files, monkeypatch):
    """A failure half-way through merging (out of memory, say) must not leave stale weights behind."""
    a, b = spec(lora_files["a"], 1.0), spec(lora_files["b"], 0.6, version="0.9.2")
    runtime = WanRuntime(str(tiny_model), device="cpu")
    runtime.render(PARAMS, loras=[a], speed="fast")
    fast, store, calls = runtime.fast, runtime.fast._store, []

    def failing_store(linear, weight):
        calls.append(linear)
        if len(calls) == 3:
            raise RuntimeError("CUDA out of memory (injected)")
        store(linear, weight)

    monkeypatch.setattr(fast, "_store", failing_store)
    with pytest.raises(RuntimeError):
        runtime.render(PARAMS, loras=[b], speed="fast")
    monkeypatch.setattr(fast, "_store", store)
    frames = runtime.render(PARAMS, loras=[a], speed="fast").frames
    fresh = WanRuntime(str(tiny_model), device="cpu").render(PARAMS, loras=[a], speed="fast").frames
    assert np.array_equal(frames, fresh)
