"""Denoise strategies: how an encoded prompt becomes latents. Each is a small callable
`(pipe, params, embeds, on_step_end) -> latents`, chosen per prompt by `WanRuntime`:

- `PipelineLoop`: WanPipeline's own loop. Plain exact jobs; a job split across GPUs (the same loop
  over a transformer whose attention diffusers splits, see `ranks.py`); fast jobs (fp8 copy swapped
  in for the call); step caching (diffusers' FirstBlockCache, blocks run eagerly).
- `CfgSplitLoop`: the same math with each step's unconditional pass on a second GPU.

A new strategy is one more class here and one more branch in `WanRuntime._strategy`.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from diffusers import FirstBlockCacheConfig

from .params import PromptParams


@dataclass
class Embeds:
    prompt: torch.Tensor
    negative: torch.Tensor | None


class PipelineLoop:
    def __init__(self, *, transformer=None, step_cache: float | None = None):
        self.transformer = transformer  # None: the pipeline's own (exact) transformer
        self.step_cache = step_cache

    def __call__(self, pipe, params: PromptParams, embeds: Embeds, on_step_end) -> torch.Tensor:
        exact = pipe.transformer
        if self.transformer is not None:
            pipe.transformer = self.transformer
        if self.step_cache:
            pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=self.step_cache))
        # The cache's hooks cannot be traced into compiled blocks: a cached job runs them eagerly.
        stance = torch.compiler.set_stance("force_eager") if self.step_cache else contextlib.nullcontext()
        try:
            with stance:
                return pipe(
                    prompt_embeds=embeds.prompt,
                    negative_prompt_embeds=embeds.negative,
                    height=params.height,
                    width=params.width,
                    num_frames=params.num_frames,
                    num_inference_steps=params.sample_steps,
                    guidance_scale=params.guidance_scale,
                    generator=torch.Generator("cpu").manual_seed(params.seed),
                    output_type="latent",
                    callback_on_step_end=lambda _pipe, index, _t, _kwargs: on_step_end(index) or {},
                ).frames
        finally:
            pipe.transformer = exact
            if self.step_cache:
                pipe.transformer.disable_cache()


class CfgSplitLoop:
    """WanPipeline's loop with every step's unconditional pass on `replica` (a transformer copy
    on a second device) while the conditional one runs here: same math, about half the time."""

    def __init__(self, replica, pool: ThreadPoolExecutor):
        self.replica, self.pool = replica, pool

    @torch.inference_mode()
    def __call__(self, pipe, params: PromptParams, embeds: Embeds, on_step_end) -> torch.Tensor:
        device, remote = pipe._execution_device, self.replica.device
        dtype = pipe.transformer.dtype
        cond_embeds, uncond_embeds = embeds.prompt.to(dtype), embeds.negative.to(remote, dtype)

        def uncond_pass(latent_input, timestep):
            with torch.inference_mode():
                return self.replica(
                    hidden_states=latent_input.to(remote),
                    timestep=timestep.to(remote),
                    encoder_hidden_states=uncond_embeds,
                    return_dict=False,
                )[0]

        scheduler = pipe.scheduler
        scheduler.set_timesteps(params.sample_steps, device=device)
        latents = pipe.prepare_latents(
            1,
            pipe.transformer.config.in_channels,
            params.height,
            params.width,
            params.num_frames,
            torch.float32,
            device,
            torch.Generator("cpu").manual_seed(params.seed),
        )
        scheduler.set_begin_index(0)
        for index, t in enumerate(scheduler.timesteps):
            latent_input, timestep = latents.to(dtype), t.expand(latents.shape[0])
            pending = self.pool.submit(uncond_pass, latent_input, timestep)
            noise_cond = pipe.transformer(
                hidden_states=latent_input, timestep=timestep, encoder_hidden_states=cond_embeds, return_dict=False
            )[0]
            noise_uncond = pending.result().to(device)
            noise_pred = noise_uncond + params.guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            on_step_end(index)
        return latents
