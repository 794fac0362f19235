"""The warm Wan 2.1 pipeline of one worker process.

`WanRuntime` loads `WanPipeline.from_pretrained` once, keeps it on its device,
and renders one prompt at a time. LoRAs stay resident as peft adapters keyed by
sha256: a job activates its stack with `set_adapters` at exactly the requested
multipliers, so switching LoRAs never reloads the base model and no scale
leaks from one job into the next. Adapters unused for longest are unloaded
when the resident set passes its memory budget.

Jobs choose a speed: "exact" (the default) runs the pipeline's bf16 transformer with the
adapters beside its weights, the same math as diffusers; "fast" swaps in an fp8 copy with the
stack merged into its weights (see `fast.py`), built on the first fast job and kept warm.

With `exact_compile` (a CUDA worker's default, WAN_EXACT_COMPILE) exact mode's transformer blocks
are compiled on CUDA, once per video size, and its jobs take their LoRAs through one fixed "stack"
adapter (see `lora_stack.py`) so that no LoRA or multiplier recompiles them: equal to peft's sum
within rounding. Without it exact jobs run peft's adapters one by one, bit for bit what diffusers
computes.

With `cp_devices` one job runs across several GPUs (see `parallel.py`): this process is rank 0 and
hands each render call to follower processes that run it in step with it.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import (AutoencoderKLWan, FirstBlockCacheConfig, FlowMatchEulerDiscreteScheduler,
                       UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel)
from transformers import UMT5EncoderModel

from .fast import FastTransformer, fp8_available
from .lora_stack import LoraStack, peft_layers
from .parallel import Followers, ParallelFailed, agree_to_stop, all_ready, enable_ulysses, init_group
from .params import PromptParams
from .shapes import tokens_of
from .video import to_uint8

log = logging.getLogger(__name__)

EULER_FROM_VERSION = (0, 9, 4)  # ai-toolkit samples Wan 2.1 previews with flow-match Euler from here on
UNIPC_UNTIL_VERSION = (0, 9, 2)
TEXT_TOKENS = 512  # WanPipeline.__call__ pads prompts to 512 tokens; encode_prompt alone defaults to 226


class RenderCanceled(Exception):
    """Raised from the step callback to stop a render; its partial work is dropped."""


@dataclass(frozen=True)
class LoraSpec:
    path: str
    sha256: str
    multiplier: float
    software_version: str | None = None


@dataclass
class RenderResult:
    frames: np.ndarray  # (F, H, W, 3) uint8
    scheduler: str
    speed: str = "exact"  # what actually ran (a worker without fast mode renders fast jobs exactly)
    step_cache: float | None = None  # what actually ran (a job split across GPUs never skips steps)
    lora_math: str = "peft"  # how LoRAs ran: "peft" adapters, one "stack" adapter, or "merged" into fp8 weights
    timings: dict[str, float] = field(default_factory=dict)


def _version_tuple(version: str | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in version.split(".")[:3])
    except (AttributeError, ValueError):
        return None


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


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class WanRuntime:
    def __init__(self, model_path: str, *, device: str | None = None, dtype: torch.dtype | None = None,
                 lora_budget_bytes: int = 8 * 2**30, low_memory: bool = False, cfg_device: str | None = None,
                 fast_mode: bool = True, fast_compile: bool = True, exact_compile: bool = False,
                 cp_devices: list[str] | None = None, cp_rank: int = 0, cp_port: int | None = None):
        self.model_path = model_path
        # One job across these devices (rank 0 here; parallel.py starts the others with cp_rank and cp_port).
        self.cp_devices = list(cp_devices or []) if len(cp_devices or []) > 1 else []
        self.cp_rank, self._cp_port = cp_rank, cp_port
        self.followers: Followers | None = None
        self.agreed_stop = False  # the last render stopped where every rank agreed to (the group is in step)
        if self.cp_devices:
            if cfg_device or low_memory:
                raise ValueError("a job split across GPUs (WAN_CP_DEVICES) excludes WAN_CFG_DEVICE and WAN_LOW_MEMORY")
            device = self.cp_devices[cp_rank]
            fast_mode = exact_compile = False  # neither is split across ranks
        self.low_memory = low_memory
        self.fast: FastTransformer | None = None
        self.cfg_device = cfg_device  # a second device for the unconditional pass (CFG in parallel)
        self.replica = None  # the transformer copy on cfg_device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cfg") if cfg_device else None
        self.device = device or default_device()
        self.dtype = dtype or (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        # The fp8 copy needs ~15 GB more on the card and an fp8-capable one; without it fast jobs render exactly.
        self.fast_mode = fast_mode and not low_memory and fp8_available(self.device)
        self.fast_compile = fast_compile  # CUDA only: the CPU's fast mode is an uncompiled emulation
        # torch.compile runs on CUDA only; the CPU takes the same LoRA path (stack adapter) uncompiled.
        self.exact_compile = exact_compile and not low_memory
        self._stacks: list[LoraStack] = []  # exact mode's stack adapter, one per transformer copy
        self.lora_budget_bytes = lora_budget_bytes
        self.pipe = None
        self._adapters: OrderedDict[str, int] = OrderedDict()  # adapter name -> bytes, least recent first
        self._schedulers: dict = {}
        self.load_seconds: float | None = None

    # -- life ---------------------------------------------------------------
    def load(self) -> "WanRuntime":
        if self.pipe is not None:
            return self
        start = time.perf_counter()
        if self.device.startswith("cuda") and torch.device(self.device).index is not None:
            torch.cuda.set_device(torch.device(self.device))  # this worker's GPU: NCCL and bare "cuda" tensors mean it
        if self.cp_devices:
            self._join_group()
        if self.low_memory:
            # Smaller cards: each model visits the GPU only while it runs (the text encoder leaves
            # after encoding), and the VAE decodes in tiles.
            pipe = WanPipeline.from_pretrained(self.model_path, dtype=self.dtype)
            pipe.enable_model_cpu_offload(device=self.device)
            pipe.vae.enable_tiling()
        else:
            device = torch.device(self.device)
            if device.type == "cuda" and device.index is None:
                device = torch.device("cuda", torch.cuda.current_device())
            pipe = self._load_onto(device)
        pipe.set_progress_bar_config(disable=True)
        own = pipe.scheduler
        self._schedulers = {
            "checkpoint": own,
            "euler": FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                                     use_dynamic_shifting=False),
            "unipc": UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                             flow_shift=3.0, num_train_timesteps=1000, solver_order=2,
                                             solver_type="bh2"),
        }
        if self.cfg_device:
            self.replica = WanTransformer3DModel.from_pretrained(
                self.model_path, subfolder="transformer", dtype=self.dtype).to(self.cfg_device).eval()
        if self.exact_compile:
            self._stacks = [LoraStack(model) for model in self._transformers(pipe)]
            if self.device.startswith("cuda"):
                # One graph per (video size, stack rank bucket): allow more than dynamo's default 8.
                torch._dynamo.config.recompile_limit = 64
                for model in self._transformers(pipe):
                    model.compile_repeated_blocks(fullgraph=True, dynamic=False)
        if self.cp_devices:
            enable_ulysses(pipe.transformer, len(self.cp_devices))
            if self.followers is not None:
                self.followers.wait_ready()
        self.pipe = pipe
        self.load_seconds = time.perf_counter() - start
        log.info("loaded %s on %s in %.1fs", self.model_path, self.device, self.load_seconds)
        return self

    def _load_onto(self, device: torch.device) -> WanPipeline:
        """Each model straight onto the device (on a GPU: no host copy of 40 GB). The device goes to each
        loader with its index: given a bare "cuda", transformers puts the text encoder on cuda:0 whatever
        GPU this worker owns."""
        models = {name: cls.from_pretrained(self.model_path, subfolder=name, dtype=self.dtype, device_map=device)
                  for name, cls in (("text_encoder", UMT5EncoderModel), ("transformer", WanTransformer3DModel),
                                    ("vae", AutoencoderKLWan))}
        return WanPipeline.from_pretrained(self.model_path, dtype=self.dtype, **models)

    def _join_group(self) -> None:
        if self.cp_rank == 0:
            self.followers = Followers(self.cp_devices, {
                "model_path": self.model_path, "dtype": self.dtype, "lora_budget_bytes": self.lora_budget_bytes})
        else:
            init_group(self.cp_rank, len(self.cp_devices), self._cp_port, self.device)

    def close(self) -> None:
        """End the follower processes of a job split across GPUs (nothing to do otherwise)."""
        if self.followers is not None:
            self.followers.close()
            self.followers = None

    # -- LoRAs --------------------------------------------------------------
    @staticmethod
    def adapter_name(sha256: str) -> str:
        return f"lora_{sha256[:16]}"

    @property
    def resident_adapters(self) -> list[str]:
        return list(self._adapters)

    def activate_loras(self, loras: list[LoraSpec]) -> float:
        """Make exactly `loras` active at their multipliers; returns the seconds it took."""
        start = time.perf_counter()
        pipe = self.load().pipe
        names = []
        for lora in loras:
            name = self.adapter_name(lora.sha256)
            if name not in self._adapters:
                path = Path(lora.path)
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
                if self.replica is not None:
                    try:
                        state, metadata = pipe.lora_state_dict(str(path.parent), weight_name=path.name,
                                                               return_lora_metadata=True)
                        pipe.load_lora_into_transformer(state, transformer=self.replica, adapter_name=name,
                                                        metadata=metadata)
                    except Exception:
                        pipe.delete_adapters(name)  # keep both copies in step
                        raise
                self._take_out(name)
                self._adapters[name] = path.stat().st_size
            self._adapters.move_to_end(name)
            names.append(name)
        weights = [lora.multiplier for lora in loras]
        for model in self._lora_models():
            if names:
                model.enable_lora()
                model.set_adapters(names, weights)
            elif self._adapters:
                model.disable_lora()
        for stack in self._stacks:
            stack.activate(list(zip(names, weights)))
        self._evict(keep=set(names))
        return time.perf_counter() - start

    def _take_out(self, name: str) -> None:
        """With the stack adapter, a new LoRA's factors leave the model (whose structure the
        compiled blocks depend on) as soon as diffusers has loaded them."""
        try:
            for stack in self._stacks:
                stack.take(name)
        except Exception:
            for stack, model in zip(self._stacks, self._transformers(self.pipe)):
                stack.drop(name)
                if name in getattr(model, "peft_config", {}):
                    model.delete_adapters(name)
            raise

    def merge_fast(self, stack: list[tuple[str, float]]) -> float:
        """Merge a stack of resident LoRAs (adapter name, multiplier) into fast mode's fp8 weights."""
        layers = self._stacks[0].layers(stack) if self._stacks else peft_layers(self.pipe.transformer, stack)
        return self.fast_transformer().merge(self.pipe.transformer, stack, layers)

    def _transformers(self, pipe):
        return [pipe.transformer] + ([self.replica] if self.replica is not None else [])

    def _lora_models(self):
        """What holds the LoRAs as peft adapters: none with the stack adapter (the stacks hold them);
        else the pipeline (its adapter API covers its transformer) and the bare replica."""
        if self._stacks:
            return []
        return [self.pipe] + ([self.replica] if self.replica is not None else [])

    def _evict(self, keep: set[str]) -> None:
        while sum(self._adapters.values()) > self.lora_budget_bytes:
            victim = next((n for n in self._adapters if n not in keep), None)
            if victim is None:
                return
            for stack in self._stacks:
                stack.drop(victim)
            for model in self._lora_models():
                model.delete_adapters(victim)
            del self._adapters[victim]
            log.info("unloaded adapter %s (LoRA memory budget)", victim)

    # -- rendering ----------------------------------------------------------
    def fast_transformer(self) -> FastTransformer:
        if self.fast is None:
            self.fast = FastTransformer(self.model_path, device=self.device, dtype=self.dtype,
                                        compile=self.fast_compile)
        return self.fast

    def warm_up(self, sizes: list[tuple[int, int, int]]) -> float:
        """Compile exact mode (with `exact_compile`) and build and compile fast mode for these (width, height, frames)
        before a job waits for it: a 1-step render per size and mode. Returns the seconds it took."""
        speeds = (["exact"] if self.exact_compile and self.device.startswith("cuda") else []) + \
            (["fast"] if self.fast_mode else [])
        if not speeds:
            return 0.0
        start = time.perf_counter()
        for speed in speeds:
            for width, height, frames in sizes:
                self.render(PromptParams(prompt="warm-up", neg="", width=width, height=height, num_frames=frames,
                                         sample_steps=1, guidance_scale=1.0, seed=0, fps=16), speed=speed)
        return time.perf_counter() - start

    def render(self, params: PromptParams, *, loras: list[LoraSpec] = (), scheduler: str = "auto",
               step_cache: float | None = None, speed: str = "exact",
               on_step: Callable[[int, int], None] | None = None) -> RenderResult:
        """Render one prompt. `on_step(done, total)` runs after every denoising step and may
        raise `RenderCanceled` (or anything) to stop. `step_cache` opts into diffusers'
        FirstBlockCache at that threshold: steps whose first block barely changes reuse the rest
        (faster, lossy; not with `cp_devices`, whose ranks would decide apart). `speed="fast"`
        renders with the fp8 transformer (lossy, see fast.py) where this runtime allows it,
        exactly otherwise; the result says what ran."""
        self.load()
        call = {"params": params, "loras": list(loras), "scheduler": scheduler,
                "step_cache": None if self.cp_devices else step_cache, "speed": speed}
        if self.followers is None:
            return self._render(**call, on_step=on_step)
        self.followers.dispatch(call)
        try:
            result = self._render(**call, on_step=on_step)
        except BaseException as exc:
            if not self.agreed_stop:  # a rank may be mid-collective: the group is unusable
                raise ParallelFailed(f"rank 0 failed mid-render: {type(exc).__name__}: {exc}") from exc
            self.followers.collect()
            raise
        self.followers.collect()
        return result

    def _render(self, params: PromptParams, *, loras: list[LoraSpec], scheduler: str, step_cache: float | None,
                speed: str, on_step: Callable[[int, int], None] | None) -> RenderResult:
        pipe = self.pipe
        self.agreed_stop = False
        loras = list(loras)
        if params.lora_scale is not None:
            loras = [replace(lora, multiplier=params.lora_scale) for lora in loras]
        try:
            self._check_split(params)
            timings = {"lora_switch": self.activate_loras(loras)}
            fast = None
            if speed == "fast" and self.fast_mode and not step_cache:
                fast = self.fast_transformer()
                timings["fast_merge"] = self.merge_fast([(self.adapter_name(lora.sha256), lora.multiplier)
                                                         for lora in loras])
            scheduler_name = pick_scheduler(scheduler, loras)
            pipe.scheduler = self._schedulers[scheduler_name]

            # 1. Text encoding
            start = time.perf_counter()
            with torch.inference_mode():
                prompt_embeds, negative_embeds = pipe.encode_prompt(
                    prompt=params.prompt, negative_prompt=params.neg,
                    do_classifier_free_guidance=params.guidance_scale > 1.0, device=pipe._execution_device,
                    max_sequence_length=TEXT_TOKENS,
                )
            self._sync()
            timings["text_encode"] = time.perf_counter() - start
        except BaseException:
            self._agree_ready(False)
            raise
        if not self._agree_ready(True):
            raise RuntimeError("another GPU of this job could not prepare it (its log says why)")

        # 2. Denoising (per-step callback), then 3. VAE decode inside the same call
        marks = {"start": time.perf_counter()}

        def step_end(_pipe, index, _t, _kwargs):
            if index + 1 == params.sample_steps:
                self._sync()
                marks["denoised"] = time.perf_counter()
            stop = None
            try:
                if on_step is not None:
                    on_step(index + 1, params.sample_steps)
            except BaseException as exc:
                stop = exc
            if self.cp_devices and agree_to_stop(stop is not None) and stop is None:
                stop = RenderCanceled()  # a follower: rank 0 stopped at this step
            if stop is not None:
                self.agreed_stop = True
                raise stop
            return {}

        if self.replica is not None and params.guidance_scale > 1.0 and not step_cache and fast is None:
            frames = self._denoise_cfg_parallel(params, prompt_embeds, negative_embeds, step_end)
            return self._result(frames, scheduler_name, timings, marks, params, step_cache=step_cache)
        if step_cache:
            pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=step_cache))
        exact = pipe.transformer
        if fast is not None:
            pipe.transformer = fast.model
        # The cache's hooks cannot be traced into compiled blocks: a cached job runs them eagerly.
        stance = torch.compiler.set_stance("force_eager") if step_cache else contextlib.nullcontext()
        try:
            with stance:
                output = pipe(
                    prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                    height=params.height, width=params.width, num_frames=params.num_frames,
                    num_inference_steps=params.sample_steps, guidance_scale=params.guidance_scale,
                    generator=torch.Generator("cpu").manual_seed(params.seed),
                    output_type="latent" if self.cp_rank else "np",  # followers: rank 0 decodes the video
                    callback_on_step_end=step_end,
                )
        finally:
            pipe.transformer = exact
            if step_cache:
                pipe.transformer.disable_cache()
            if self.low_memory:
                pipe.maybe_free_model_hooks()  # a canceled call must not leave the transformer on the GPU
        frames = output.frames[0] if not self.cp_rank else np.zeros((0, params.height, params.width, 3))
        return self._result(frames, scheduler_name, timings, marks, params,
                            speed="exact" if fast is None else "fast", step_cache=step_cache)

    def _check_split(self, params: PromptParams) -> None:
        tokens, ranks = tokens_of(params.width, params.height, params.num_frames), len(self.cp_devices)
        if ranks and tokens % ranks:
            raise ValueError(f"{params.width}x{params.height}x{params.num_frames} makes {tokens} tokens, which this "
                             f"worker's {ranks} GPUs cannot split evenly; change the size or WAN_CP_DEVICES")

    def _agree_ready(self, ready: bool) -> bool:
        """A split job's ranks tell each other whether they prepared it; if one did not, all stop here."""
        if self.cp_devices:
            ready = all_ready(ready)
            self.agreed_stop = not ready
        return ready

    def _result(self, frames, scheduler_name, timings, marks, params, speed="exact", step_cache=None) -> RenderResult:
        done = time.perf_counter()
        timings["denoise"] = marks["denoised"] - marks["start"]
        timings["denoise_per_step"] = timings["denoise"] / params.sample_steps
        timings["vae_decode"] = done - marks["denoised"]
        lora_math = "merged" if speed == "fast" else "stack" if self._stacks else "peft"
        return RenderResult(frames=to_uint8(frames), scheduler=scheduler_name, speed=speed, lora_math=lora_math,
                            step_cache=step_cache, timings=timings)

    @torch.inference_mode()
    def _denoise_cfg_parallel(self, params: PromptParams, prompt_embeds, negative_embeds, step_end) -> np.ndarray:
        """WanPipeline's denoising loop and decode, with the unconditional pass of every step running on
        `cfg_device` while the conditional one runs here: same math, about half the time per step."""
        pipe, device, remote = self.pipe, torch.device(self.device), torch.device(self.cfg_device)
        dtype = pipe.transformer.dtype
        cond_embeds, uncond_embeds = prompt_embeds.to(dtype), negative_embeds.to(remote, dtype)

        def uncond_pass(latent_input, timestep):
            with torch.inference_mode():
                return self.replica(hidden_states=latent_input.to(remote), timestep=timestep.to(remote),
                                    encoder_hidden_states=uncond_embeds, return_dict=False)[0]

        scheduler = pipe.scheduler
        scheduler.set_timesteps(params.sample_steps, device=device)
        latents = pipe.prepare_latents(1, pipe.transformer.config.in_channels, params.height, params.width,
                                       params.num_frames, torch.float32, device,
                                       torch.Generator("cpu").manual_seed(params.seed))
        scheduler.set_begin_index(0)
        for index, t in enumerate(scheduler.timesteps):
            latent_input, timestep = latents.to(dtype), t.expand(latents.shape[0])
            pending = self._pool.submit(uncond_pass, latent_input, timestep)
            noise_cond = pipe.transformer(hidden_states=latent_input, timestep=timestep,
                                          encoder_hidden_states=cond_embeds, return_dict=False)[0]
            noise_uncond = pending.result().to(device)
            noise_pred = noise_uncond + params.guidance_scale * (noise_cond - noise_uncond)
            latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            step_end(pipe, index, t, {})

        vae = pipe.vae
        latents = latents.to(vae.device, vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(
            latents.device, latents.dtype)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return pipe.video_processor.postprocess_video(video, output_type="np")[0]

    def _sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
