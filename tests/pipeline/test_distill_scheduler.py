"""The draft preset's pipeline facts: the distill scheduler samples LightX2V's step-distill schedule, and a
preset's fixed prompt values win over what a prompt says."""

import pytest
import torch

from workers.pipeline.params import DRAFT_GUIDANCE, resolve_prompt
from workers.pipeline.runtime import DISTILL_SHIFT, DistillScheduler, distill_steps, pick_scheduler


def lightx2v_schedule(step_list: list[int], shift: float) -> tuple[list[float], list[float]]:
    """LightX2V's WanStepDistillScheduler.set_denoising_timesteps, written out: the step list indexes a
    1000-point grid of unshifted sigmas, shifted; the transformer's timesteps are the sigmas times 1000."""
    grid = torch.linspace(1.0, 0.0, 1001)[:-1]
    grid = shift * grid / (1 + (shift - 1) * grid)
    index = [1000 - step for step in step_list]
    return (grid * 1000)[index].tolist(), grid[index].tolist()


@pytest.fixture
def scheduler():
    return DistillScheduler(num_train_timesteps=1000, shift=DISTILL_SHIFT, use_dynamic_shifting=False)


def test_four_steps_run_the_1000_750_500_250_schedule_at_shift_5(scheduler):
    assert distill_steps(4) == [1000, 750, 500, 250]
    scheduler.set_timesteps(4, device="cpu")
    timesteps, sigmas = lightx2v_schedule([1000, 750, 500, 250], 5.0)
    assert scheduler.timesteps.tolist() == pytest.approx(timesteps, abs=1e-3)
    assert scheduler.timesteps.tolist() == pytest.approx([1000.0, 937.5, 833.333, 625.0], abs=1e-3)
    assert scheduler.sigmas.tolist() == pytest.approx([*sigmas, 0.0], abs=1e-6)  # the last step ends clean


@pytest.mark.parametrize("steps", [1, 2, 3, 6, 8])
def test_other_step_counts_are_spaced_from_1000_the_same_way(scheduler, steps):
    step_list = distill_steps(steps)
    assert step_list[0] == 1000 and len(set(step_list)) == steps
    assert {a - b for a, b in zip(step_list, step_list[1:])} <= {1000 // steps}
    scheduler.set_timesteps(steps, device="cpu")
    assert scheduler.timesteps.tolist() == pytest.approx(lightx2v_schedule(step_list, 5.0)[0], abs=1e-3)


def test_an_euler_step_lands_where_the_flow_says(scheduler):
    """Flow-match Euler: latents move by (next sigma - sigma) times the predicted flow."""
    scheduler.set_timesteps(4, device="cpu")
    sample, flow = torch.ones(1, 2), torch.full((1, 2), 0.5)
    out = scheduler.step(flow, scheduler.timesteps[0], sample, return_dict=False)[0]
    assert torch.allclose(out, sample + (0.9375 - 1.0) * flow)


def test_distill_is_an_explicit_choice():
    assert pick_scheduler("distill", []) == "distill"


def test_a_presets_fixed_values_win_over_the_prompt_and_its_flags():
    item = {"prompt": "a cat --cfg 6 --steps 8", "guidance_scale": 5.0}
    params = resolve_prompt(item, index=0, semantics="ai-toolkit", overrides={"guidance_scale": DRAFT_GUIDANCE})
    assert (params.guidance_scale, params.sample_steps, params.prompt) == (1.0, 8, "a cat")
