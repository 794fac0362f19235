"""The warm Wan 2.1 pipeline of one worker process (or of one rank of a split job).

`WanRuntime` loads the pipeline once, keeps it on its device and renders one prompt at a time, in
the numbered steps of diffusers' `WanPipeline.__call__`: 1. check inputs, 2. LoRAs, 3. encode the
prompt, 4. denoise (a strategy from `denoise.py`), 5. decode. What it may do (devices, speeds,
compile, LoRA math) is a `RuntimeConfig` resolved once (`config.py`); which LoRAs it holds is its
`LoraResidency` (`residency.py`).

Jobs choose a speed: "exact" (the default) runs the pipeline's bf16 transformer with the LoRAs
beside its weights, the same math as diffusers (compiled on CUDA with `exact_compile`, LoRAs then
through one stack adapter, equal within rounding); "fast" swaps in an fp8 copy with the stack
merged into its weights (see `fast.py`), built on the first fast job and kept warm.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from diffusers import (
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from diffusers.utils.torch_utils import get_module_execution_device
from transformers import UMT5EncoderModel

from .config import RuntimeConfig
from .denoise import CfgSplitLoop, Embeds, PipelineLoop
from .fast import FastTransformer
from .params import PromptParams
from .ranks import SoloSync, enable_ulysses
from .residency import LoraResidency, LoraSpec, adapter_name
from .shapes import tokens_of
from .video import to_uint8

log = logging.getLogger(__name__)

EULER_FROM_VERSION = (0, 9, 4)  # ai-toolkit samples Wan 2.1 previews with flow-match Euler from here on
UNIPC_UNTIL_VERSION = (0, 9, 2)
TEXT_TOKENS = 512  # WanPipeline.__call__ pads prompts to 512 tokens; encode_prompt alone defaults to 226

DISTILL_SHIFT = 5.0  # LightX2V's sample_shift for its step-distilled Wan 2.1 models and LoRAs

__all__ = ["DistillScheduler", "LoraSpec", "RenderCanceled", "RenderResult", "WanRuntime", "pick_scheduler"]


class RenderCanceled(Exception):
    """Raised from the step callback to stop a render; its partial work is dropped."""


@dataclass
class RenderResult:
    frames: np.ndarray  # (F, H, W, 3) uint8
    scheduler: str
    speed: str = "exact"  # what actually ran (a worker without fast mode renders fast jobs exactly)
    step_cache: float | None = None  # what actually ran (a job split across GPUs never skips steps)
    lora_math: str = "peft"  # how LoRAs ran: "peft" adapters, one "stack" adapter, or "merged" into fp8 weights
    attention: str = "bf16"  # the self-attention that ran: "bf16", or fast mode's "fp8"
    timings: dict[str, float] = field(default_factory=dict)
    loras: list[LoraSpec] = field(default_factory=list)  # the stack at the multipliers it ran with (`--m` applied)


def _version_tuple(version: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in version.split(".")[:3])
    except (AttributeError, ValueError):
        return None


def distill_steps(steps: int, train_timesteps: int = 1000) -> list[int]:
    """The denoising step list of step-distilled sampling: 1000, 750, 500, 250 for 4 steps, and
    1000 - i * (1000 // n) for n (LightX2V's rule)."""
    return [train_timesteps - i * (train_timesteps // steps) for i in range(steps)]


class DistillScheduler(FlowMatchEulerDiscreteScheduler):
    """Flow-match Euler for step-distilled LoRAs (LightX2V's StepDistill-CfgDistill: 4 steps, no CFG,
    shift 5) on the denoising step list of `distill_steps`. The list places each step on the unshifted
    1000-step grid, as LightX2V's WanStepDistillScheduler does: 1000/750/500/250 are sigmas 1, 0.75,
    0.5, 0.25, shifted by 5 to 1, 0.9375, 0.8333, 0.625, and the transformer is conditioned on those
    times 1000 (1000, 937.5, 833.3, 625), so timestep and sigma agree; the last step lands on 0."""

    def set_timesteps(self, num_inference_steps=None, device=None, sigmas=None, mu=None, timesteps=None):
        if sigmas is None and timesteps is None:
            train = self.config.num_train_timesteps
            sigmas = [step / train for step in distill_steps(num_inference_steps, train)]
        super().set_timesteps(num_inference_steps, device=device, sigmas=sigmas, mu=mu, timesteps=timesteps)


def pick_scheduler(choice: str, loras: list[LoraSpec]) -> str:
    """The scheduler a job runs with: explicit, or the one its first LoRA was previewed with."""
    if choice != "auto":
        return choice
    version = _version_tuple(loras[0].software_version) if loras else None
    if version is None:
        return "checkpoint"
    if version >= EULER_FROM_VERSION:
        return "euler"
    if version <= UNIPC_UNTIL_VERSION:
        return "unipc"
    return "checkpoint"


class StepEnd:
    """After every denoising step: the caller's `on_step(done, total)` (progress, cancel, time
    limit), then the ranks' agreement to go on; marks when denoising ended."""

    def __init__(self, runtime: WanRuntime, steps: int, on_step: Callable[[int, int], None] | None):
        self.runtime, self.steps, self.on_step = runtime, steps, on_step
        self.start = time.perf_counter()
        self.denoised: float | None = None

    def __call__(self, index: int) -> None:
        if index + 1 == self.steps:
            self.runtime.synchronize()
            self.denoised = time.perf_counter()
        stop = None
        try:
            if self.on_step is not None:
                self.on_step(index + 1, self.steps)
        except BaseException as exc:
            stop = exc
        if self.runtime.sync.stop(stop is not None) and stop is None:
            stop = RenderCanceled()  # a follower: rank 0 stopped at this step
        if stop is not None:
            raise stop


class WanRuntime:
    def __init__(self, model_path: str | RuntimeConfig, *, sync=None, **options):
        """`WanRuntime(config)`, or `WanRuntime(model_path, **options)` resolving the options
        (see `RuntimeConfig.resolve`). `sync` is the rank agreement of a split job (`ranks.py`)."""
        self.config = (
            model_path if isinstance(model_path, RuntimeConfig) else RuntimeConfig.resolve(model_path, **options)
        )
        self.sync = sync or SoloSync()
        self.device, self.dtype = self.config.device, self.config.dtype
        self.pipe: WanPipeline | None = None
        self.loras: LoraResidency | None = None
        self.fast: FastTransformer | None = None  # built on the first fast job (or warm-up)
        self.replica = None  # the transformer copy on cfg_device
        self._cfg_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cfg") if self.config.cfg_device else None
        self._schedulers: dict = {}
        self.load_seconds: float | None = None

    # -- life ---------------------------------------------------------------
    def load(self) -> WanRuntime:
        if self.pipe is not None:
            return self
        config, start = self.config, time.perf_counter()
        if config.on_cuda and torch.device(config.device).index is not None:
            torch.cuda.set_device(torch.device(config.device))  # this worker's GPU: NCCL and bare "cuda" tensors
        pipe = self._load_offloaded() if config.low_memory else self._load_onto(self._indexed_device())
        pipe.set_progress_bar_config(disable=True)
        self._schedulers = {
            "checkpoint": pipe.scheduler,
            "euler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
            "unipc": UniPCMultistepScheduler(
                prediction_type="flow_prediction",
                use_flow_sigmas=True,
                flow_shift=3.0,
                num_train_timesteps=1000,
                solver_order=2,
                solver_type="bh2",
            ),
            "distill": DistillScheduler(num_train_timesteps=1000, shift=DISTILL_SHIFT, use_dynamic_shifting=False),
        }
        if config.cfg_device:
            self.replica = (
                WanTransformer3DModel.from_pretrained(config.model_path, subfolder="transformer", dtype=self.dtype)
                .to(config.cfg_device)
                .eval()
            )
        self.loras = LoraResidency(
            pipe, replica=self.replica, stack_adapter=config.lora_stack, budget_bytes=config.lora_budget_bytes
        )
        if config.compile_exact:
            # One graph per (video size, stack rank bucket): allow more than dynamo's default 8.
            torch._dynamo.config.recompile_limit = 64
            for model in self.loras.transformers:
                model.compile_repeated_blocks(fullgraph=True, dynamic=False)
        if config.split:
            enable_ulysses(pipe.transformer, len(config.cp_devices))
        self.pipe = pipe
        self.load_seconds = time.perf_counter() - start
        log.info("loaded %s on %s in %.1fs", config.model_path, config.device, self.load_seconds)
        return self

    def close(self) -> None:
        """Nothing to end (a `SplitRuntime` ends its followers)."""

    def _indexed_device(self) -> torch.device:
        device = torch.device(self.config.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    def _load_onto(self, device: torch.device) -> WanPipeline:
        """Each model straight onto the device (on a GPU: no host copy of 40 GB). The device goes to each
        loader with its index: given a bare "cuda", transformers puts the text encoder on cuda:0 whatever
        GPU this worker owns."""
        path = self.config.model_path
        models = {
            name: cls.from_pretrained(path, subfolder=name, dtype=self.dtype, device_map=device)
            for name, cls in (
                ("text_encoder", UMT5EncoderModel),
                ("transformer", WanTransformer3DModel),
                ("vae", AutoencoderKLWan),
            )
        }
        return WanPipeline.from_pretrained(path, dtype=self.dtype, **models)

    def _load_offloaded(self) -> WanPipeline:
        """Smaller cards: each model visits the GPU only while it runs, the VAE decodes in tiles."""
        pipe = WanPipeline.from_pretrained(self.config.model_path, dtype=self.dtype)
        pipe.enable_model_cpu_offload(device=self.config.device)
        pipe.vae.enable_tiling()
        return pipe

    def fast_transformer(self) -> FastTransformer:
        if self.fast is None:
            self.fast = FastTransformer(
                self.config.model_path,
                device=self.device,
                dtype=self.dtype,
                compile=self.config.fast_compile,
                attention=self.config.fast_attention,
            )
        return self.fast

    def warm_up(self, sizes: list[tuple[int, int, int]]) -> float:
        """Do the compile work of every speed this runtime compiles (and build fast mode's copy) for these
        (width, height, frames) before a job waits for it: a 1-step render per size and speed. Returns seconds."""
        speeds = self.config.warm_up_speeds()
        if not speeds:
            return 0.0
        start = time.perf_counter()
        for speed in speeds:
            for width, height, frames in sizes:
                self.render(
                    PromptParams(
                        prompt="warm-up",
                        neg="",
                        width=width,
                        height=height,
                        num_frames=frames,
                        sample_steps=1,
                        guidance_scale=1.0,
                        seed=0,
                        fps=16,
                    ),
                    speed=speed,
                )
        return time.perf_counter() - start

    # -- LoRAs (also called by tests and benchmarks) --------------------------
    adapter_name = staticmethod(adapter_name)

    @property
    def resident_adapters(self) -> list[str]:
        return self.loras.resident if self.loras else []

    def activate_loras(self, loras: list[LoraSpec]) -> float:
        return self.load().loras.activate(loras)

    def merge_fast(self, stack: list[tuple[str, float]]) -> float:
        """Merge a stack of resident LoRAs (adapter name, multiplier), made active just before, into fast
        mode's fp8 weights."""
        return self.fast_transformer().merge(
            self.pipe.transformer, stack, self.loras.layers(stack), self.loras.delta_names(stack)
        )

    # -- rendering ----------------------------------------------------------
    def render(
        self,
        params: PromptParams,
        *,
        loras: list[LoraSpec] = (),
        scheduler: str = "auto",
        step_cache: float | None = None,
        speed: str = "exact",
        on_step: Callable[[int, int], None] | None = None,
    ) -> RenderResult:
        """Render one prompt. `on_step(done, total)` runs after every denoising step and may raise
        `RenderCanceled` (or anything) to stop. `step_cache` opts into FirstBlockCache at that
        threshold (faster, lossy; never on a split job, whose ranks would decide apart).
        `speed="fast"` renders with the fp8 transformer where this runtime has it, exactly
        otherwise; the result says what ran."""
        pipe = self.load().pipe
        self.sync.begin()
        timings: dict[str, float] = {}
        try:
            # 1. Check inputs: the size, the multipliers, what this runtime will actually run
            self._check_size(params)
            loras = [
                lora
                if params.lora_scale is None or lora.keep_multiplier
                else replace(lora, multiplier=params.lora_scale)
                for lora in loras
            ]
            step_cache = None if self.config.split else step_cache
            fast = speed == "fast" and self.config.fast_mode and not step_cache

            # 2. LoRAs: activate the stack at its multipliers (fast: merged into the fp8 weights)
            timings["lora_switch"] = self.loras.activate(loras)
            if fast:
                timings["fast_merge"] = self.merge_fast(
                    [(adapter_name(lora.sha256), lora.multiplier) for lora in loras]
                )
            scheduler_name = pick_scheduler(scheduler, loras)
            pipe.scheduler = self._schedulers[scheduler_name]

            # 3. Encode the prompt
            start = time.perf_counter()
            with torch.inference_mode():
                prompt_embeds, negative_embeds = pipe.encode_prompt(
                    prompt=params.prompt,
                    negative_prompt=params.neg,
                    do_classifier_free_guidance=params.guidance_scale > 1.0,
                    device=pipe._execution_device,
                    max_sequence_length=TEXT_TOKENS,
                )
            self.synchronize()
            timings["text_encode"] = time.perf_counter() - start
        except BaseException:
            self.sync.ready(False)
            raise
        if not self.sync.ready(True):
            raise RuntimeError("another GPU of this job could not prepare it (its log says why)")

        # 4. Denoise, with the strategy this prompt takes; 5. decode (rank 0 only: the other ranks of a
        # split job hold the same latents)
        step_end = StepEnd(self, params.sample_steps, on_step)
        try:
            latents = self._strategy(params, fast=fast, step_cache=step_cache)(
                pipe, params, Embeds(prompt_embeds, negative_embeds), step_end
            )
            frames = (
                self._decode(latents)
                if self.config.decodes
                else np.zeros((0, params.height, params.width, 3), dtype=np.uint8)
            )
        finally:
            if self.config.low_memory:
                pipe.maybe_free_model_hooks()  # a canceled call must not leave the transformer on the GPU
        timings["denoise"] = step_end.denoised - step_end.start
        timings["denoise_per_step"] = timings["denoise"] / params.sample_steps
        timings["vae_decode"] = time.perf_counter() - step_end.denoised
        return RenderResult(
            frames=frames,
            scheduler=scheduler_name,
            speed="fast" if fast else "exact",
            lora_math="merged" if fast else self.loras.lora_math,
            attention=self.config.fast_attention if fast else "bf16",
            step_cache=step_cache,
            timings=timings,
            loras=loras,
        )

    def _check_size(self, params: PromptParams) -> None:
        tokens, ranks = tokens_of(params.width, params.height, params.num_frames), len(self.config.cp_devices)
        if ranks and tokens % ranks:
            raise ValueError(
                f"{params.width}x{params.height}x{params.num_frames} makes {tokens} tokens, which this "
                f"worker's {ranks} GPUs cannot split evenly; change the size or WAN_CP_DEVICES"
            )

    def _strategy(self, params: PromptParams, *, fast: bool, step_cache: float | None):
        if self.replica is not None and params.guidance_scale > 1.0 and not step_cache and not fast:
            return CfgSplitLoop(self.replica, self._cfg_pool)
        return PipelineLoop(transformer=self.fast.model if fast else None, step_cache=step_cache)

    @torch.inference_mode()
    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """WanPipeline's own decode: un-normalise the latents, VAE decode, frames in [0, 1] -> uint8."""
        pipe, vae = self.pipe, self.pipe.vae
        latents = latents.to(get_module_execution_device(vae), dtype=vae.dtype)
        mean = (
            torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        )
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(
            latents.device, latents.dtype
        )
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")[0]
        self.synchronize()
        return to_uint8(frames)

    def synchronize(self) -> None:
        if self.config.on_cuda:
            torch.cuda.synchronize()
