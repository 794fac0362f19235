"""Random-weight Wan 2.1 checkpoints and LoRAs (ai-toolkit and ComfyUI/kohya formats), written in code.

No machine of the project can download weights, so the real loading path
(`WanPipeline.from_pretrained` on a diffusers folder) is exercised on folders
built here: a tiny pipeline for CPU tests and the demo, and the full-size 14B
shapes on a GPU for timing. Weights are random; shapes and file layout are
the real ones.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from safetensors.torch import save_file

from .shapes import LORA_TARGETS, TINY_TRANSFORMER, TINY_UMT5, WanShape


def _tokenizer(vocab_size: int):
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>"]
    pieces += ["\u2581" + c for c in string.ascii_lowercase + string.digits]
    pieces += list(string.ascii_letters + string.digits + string.punctuation)
    pieces += ["\u2581"]
    words = "a the of photo person video cat dog walking in on with sks trigger".split()
    pieces += ["\u2581" + w for w in words]
    pieces = list(dict.fromkeys(pieces))[:vocab_size]
    vocab = [(p, 0.0 if i < 3 else -float(i)) for i, p in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _scheduler():
    from diffusers import UniPCMultistepScheduler

    # The scheduler config shipped with Wan-AI/Wan2.1-T2V-14B-Diffusers.
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
        num_train_timesteps=1000,
        solver_order=2,
        solver_type="bh2",
    )


def write_random_wan(
    out_dir: str | Path,
    *,
    transformer_config: dict = TINY_TRANSFORMER,
    text_encoder_config: dict = TINY_UMT5,
    vae_config: dict | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> Path:
    """Write a random-weight Wan 2.1 T2V pipeline in diffusers format and return its folder.

    Defaults give the tiny CPU pipeline; pass the 14B / UMT5-XXL configs and
    `vae_config={}` (the real VAE's defaults) for the full-size shapes.
    """
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    out_dir = Path(out_dir)
    if vae_config is None:
        vae_config = dict(
            base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
        )
    torch.manual_seed(seed)
    default_dtype = torch.get_default_dtype()
    try:
        with torch.device(device):
            vae = AutoencoderKLWan(**vae_config)
            torch.set_default_dtype(dtype)  # build the big parts directly in their dtype (14B won't fit in fp32)
            transformer = WanTransformer3DModel(**transformer_config)
            text_encoder = UMT5EncoderModel(UMT5Config(**text_encoder_config))
    finally:
        torch.set_default_dtype(default_dtype)
    pipe = WanPipeline(
        tokenizer=_tokenizer(text_encoder_config["vocab_size"]),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=_scheduler(),
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def write_aitoolkit_lora(
    path: str | Path,
    *,
    shape: WanShape,
    rank: int = 4,
    seed: int = 0,
    scale: float = 0.05,
    dtype: torch.dtype = torch.bfloat16,
    software_version: str = "0.9.4",
    training_step: int = 1000,
    trigger_words: tuple[str, ...] = ("sks",),
) -> Path:
    """Write a LoRA as ai-toolkit saves one for wan21 (keys, dtype and metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    in_out = {"ffn.0": (shape.dim, shape.ffn_dim), "ffn.2": (shape.ffn_dim, shape.dim)}
    tensors = {}
    for block in range(shape.num_layers):
        for module in LORA_TARGETS:
            fan_in, fan_out = in_out.get(module, (shape.dim, shape.dim))
            key = f"diffusion_model.blocks.{block}.{module}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(rank, fan_in, generator=gen) * scale).to(dtype)
            tensors[f"{key}.lora_B.weight"] = (torch.randn(fan_out, rank, generator=gen) * scale).to(dtype)
    name = path.stem
    metadata = {
        "format": "pt",
        "software": json.dumps(
            {"name": "ai-toolkit", "repo": "https://github.com/ostris/ai-toolkit", "version": software_version}
        ),
        "ss_base_model_version": "wan_2.1",
        "ss_output_name": name,
        "training_info": json.dumps({"step": training_step, "epoch": 0}),
        "ss_tag_frequency": json.dumps({"1_" + name: {w: 10 for w in trigger_words}}),
        "name": name,
        "version": "1.0",
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


HEAD_OUT = 64  # Wan 2.1's head: 16 latent channels x a 1x2x2 patch, for every model size


def write_kohya_lora(
    path: str | Path,
    *,
    shape: WanShape,
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    scale: float = 0.05,
    dtype: torch.dtype = torch.bfloat16,
    norm_deltas: str | None = "zero",
    outside: bool = False,
    device: str = "cpu",
) -> Path:
    """Write a LoRA as ComfyUI/kohya-style tools save one for Wan 2.1, LightX2V's step-distill LoRAs among
    them: `diffusion_model.blocks.N.<module>.lora_down.weight` / `.lora_up.weight` with an `.alpha` per
    module (default: half the rank, so the scaling matters) and a `.diff_b` bias delta per LoRA'd linear;
    each block's norms get `diff` (and `norm3` a `diff_b`), zero as LightX2V ships them (`norm_deltas`
    "zero"), random ("random") or none (None). `outside` adds what lies outside the blocks' linears:
    factors with an alpha and a bias delta on `time_embedding.2`, full deltas for the head (weight, bias
    and modulation), the time projection's bias and each block's modulation."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device).manual_seed(seed)
    alpha = rank / 2 if alpha is None else alpha

    def random(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=gen, device=device) * scale).to(dtype)

    def factors(key: str, fan_in: int, fan_out: int) -> dict:
        return {
            f"{key}.lora_down.weight": random(rank, fan_in),
            f"{key}.lora_up.weight": random(fan_out, rank),
            f"{key}.alpha": torch.tensor(float(alpha), dtype=dtype, device=device),
            f"{key}.diff_b": random(fan_out),
        }

    in_out = {"ffn.0": (shape.dim, shape.ffn_dim), "ffn.2": (shape.ffn_dim, shape.dim)}
    tensors = {}
    for block in range(shape.num_layers):
        key = f"diffusion_model.blocks.{block}"
        for module in LORA_TARGETS:
            tensors.update(factors(f"{key}.{module}", *in_out.get(module, (shape.dim, shape.dim))))
        if norm_deltas is not None:
            norms = ["norm3", *(f"{attn}.norm_{p}" for attn in ("self_attn", "cross_attn") for p in "qk")]
            for name in [f"{key}.{norm}.diff" for norm in norms] + [f"{key}.norm3.diff_b"]:
                tensors[name] = random(shape.dim) if norm_deltas == "random" else torch.zeros(shape.dim, dtype=dtype)
        if outside:
            tensors[f"{key}.modulation.diff"] = random(1, 6, shape.dim)
    if outside:
        tensors.update(factors("diffusion_model.time_embedding.2", shape.dim, shape.dim))
        tensors["diffusion_model.time_projection.1.diff_b"] = random(6 * shape.dim)
        tensors["diffusion_model.head.head.diff"] = random(HEAD_OUT, shape.dim)
        tensors["diffusion_model.head.head.diff_b"] = random(HEAD_OUT)
        tensors["diffusion_model.head.modulation.diff"] = random(1, 2, shape.dim)
    tensors = {name: tensor.cpu().contiguous() for name, tensor in tensors.items()}
    save_file(tensors, str(path), metadata={"format": "pt", "ss_output_name": path.stem})
    return path
