"""ai-toolkit training runs as the trainer leaves them on disk, for the import tests: the folder named after
the run, its config.yaml, a checkpoint per save, the final file and sample images the import leaves alone."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import TINY_SHAPE
from workers.pipeline.checkpoints import write_aitoolkit_lora


def run_config(name: str, trigger_word: str) -> str:
    """A Wan 2.1 14B run's config as ai-toolkit's example writes one (config/examples/train_lora_wan21_14b_24gb.yaml),
    trimmed, saving every 250 steps and sampling two prompts at 0.8 (the second with its own seed, 7)."""
    return f"""\
---
job: extension
config:
  # this name will be the folder and filename name
  name: "{name}"
  process:
    - type: 'sd_trainer'
      training_folder: "output"
      device: cuda:0
      trigger_word: "{trigger_word}"
      network:
        type: "lora"
        linear: 32
        linear_alpha: 32
      save:
        dtype: bf16
        save_every: 250
        max_step_saves_to_keep: 4
      datasets:
        - folder_path: "/data/{trigger_word}"
          caption_ext: "txt"
          caption_dropout_rate: 0.05
          cache_latents_to_disk: true
          resolution: [ 632 ]
      train:
        batch_size: 1
        steps: 1000
        gradient_checkpointing: true
        noise_scheduler: "flowmatch"
        timestep_type: 'sigmoid'
        optimizer: "adamw8bit"
        lr: 1e-4
        dtype: bf16
      model:
        name_or_path: "Wan-AI/Wan2.1-T2V-14B-Diffusers"
        arch: 'wan21'
        quantize_te: true
        quantize: true
        low_vram: true
      sample:
        sampler: "flowmatch"
        sample_every: 250
        width: 832
        height: 480
        num_frames: 33
        fps: 16
        network_multiplier: 0.8
        prompts:
          - "[trigger] walking on a beach at sunset"
          - "[trigger] playing chess in the park --seed 7"
        neg: ""
        seed: 42
        walk_seed: true
        guidance_scale: 5
        sample_steps: 30
meta:
  name: "[name]"
  version: '1.0'
"""


def write_checkpoint(folder: Path, step: int | None, *, seed: int, header_step: int | None = None) -> Path:
    """One file of the run in `folder` (named after the run): `<run>_<step:09d>`, or the final `<run>` (step=None,
    its header saying the step it was saved at)."""
    name = folder.name if step is None else f"{folder.name}_{step:09d}"
    return write_aitoolkit_lora(
        folder / f"{name}.safetensors",
        shape=TINY_SHAPE,
        seed=seed,
        training_step=header_step if header_step is not None else step,
        trigger_words=("woman", "beach"),
    )


def write_run(folder: Path, *, trigger_word: str, seeds: dict[int, int], final_seed: int | None = None) -> Path:
    """An ai-toolkit output folder after its last step: config.yaml, a checkpoint per step of `seeds` (step ->
    seed), the final file when `final_seed` is given, and a sample image."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(run_config(folder.name, trigger_word))
    for step, seed in seeds.items():
        write_checkpoint(folder, step, seed=seed)
    if final_seed is not None:
        write_checkpoint(folder, None, seed=final_seed, header_step=max(seeds))
    (folder / "samples").mkdir(exist_ok=True)
    (folder / "samples" / f"1740000000000__{min(seeds):09d}_0.jpg").write_bytes(b"\xff\xd8\xff\xe0 a preview")
    return folder
