"""One job split across two ranks (here two CPU processes over gloo, as GPUs would be over NCCL):
the frames one process renders, and every rank stops together."""

import pytest

from tests.pipeline.test_runtime import PARAMS, assert_within_rounding, render_canceled_at_once, spec
from workers.pipeline.config import RuntimeConfig
from workers.pipeline.parallel import ParallelFailed, SplitRuntime
from workers.pipeline.params import resolve_prompt
from workers.pipeline.runtime import LoraSpec, WanRuntime


@pytest.fixture
def split(tiny_model):
    runtime = SplitRuntime(RuntimeConfig.resolve(str(tiny_model), cp_devices=["cpu", "cpu"])).load()
    yield runtime
    runtime.close()  # a process holds one group at a time


@pytest.fixture(scope="module")
def single(tiny_model):
    return WanRuntime(str(tiny_model), device="cpu")


def test_a_split_job_renders_the_frames_of_one_process(split, single, lora_files):
    assert split.pipe.transformer._parallel_config is not None  # diffusers splits its attention
    a, b = lora_files["a"], lora_files["b"]
    for loras in ([spec(a, 0.7), spec(b, -0.4)], [], [spec(b, 1.0)]):
        assert_within_rounding(split.render(PARAMS, loras=loras).frames, single.render(PARAMS, loras=loras).frames)


def test_a_cancel_stops_every_rank_at_the_same_step(split):
    assert render_canceled_at_once(split) == [1]
    assert split.render(PARAMS).frames.shape == (PARAMS.num_frames, PARAMS.height, PARAMS.width, 3)


def test_a_bad_lora_fails_the_job_on_every_rank_and_the_next_job_runs(split, single, lora_files, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(Exception) as failure:
        split.render(PARAMS, loras=[LoraSpec(str(broken), sha256="f" * 64, multiplier=1.0)])
    assert not isinstance(failure.value, ParallelFailed)  # the job failed, the group is fine
    loras = [spec(lora_files["a"], 1.0)]
    assert_within_rounding(split.render(PARAMS, loras=loras).frames, single.render(PARAMS, loras=loras).frames)


def test_a_size_the_ranks_cannot_split_fails_the_job_not_the_worker(split):
    odd = resolve_prompt({"prompt": "x", "width": 144, "height": 144, "num_frames": 9, "sample_steps": 2}, index=0)
    with pytest.raises(ValueError, match="cannot split evenly"):  # 3 x 9 x 9 = 243 tokens on 2 ranks
        split.render(odd)
    assert split.render(PARAMS).frames.shape == (PARAMS.num_frames, PARAMS.height, PARAMS.width, 3)


def test_a_split_job_never_skips_steps_and_says_so(split):
    assert split.render(PARAMS, step_cache=0.5).step_cache is None


def test_a_follower_that_died_fails_the_job_so_the_worker_is_replaced(split):
    follower = split.followers._processes[0]
    follower.kill()
    follower.join()
    with pytest.raises(ParallelFailed, match="rank 1 is gone"):
        split.render(PARAMS)


def test_splitting_excludes_the_cfg_device(tiny_model):
    with pytest.raises(ValueError):
        RuntimeConfig.resolve(str(tiny_model), cp_devices=["cpu", "cpu"], cfg_device="cpu")
