"""Shapes of the Wan 2.1 models and of ai-toolkit LoRAs for them (no torch needed to read them)."""

from __future__ import annotations

from dataclasses import dataclass

WAN_14B_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
# UMT5-XXL encoder as shipped with Wan 2.1 (google/umt5-xxl).
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    dense_act_fn="gelu_new",
    is_gated_act=True,
    tie_word_embeddings=False,
)

TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,  # as the 14B: any size the API accepts has rotary positions
)
TINY_VOCAB = 512
TINY_UMT5 = dict(
    vocab_size=TINY_VOCAB,
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    feed_forward_proj="gated-gelu",
    dense_act_fn="gelu_new",
    is_gated_act=True,
    tie_word_embeddings=False,
)


def tokens_of(width: int, height: int, frames: int) -> int:
    """The transformer's sequence length for a video: latent frames x (H/16) x (W/16)."""
    return ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)


# Modules of each Wan block that ai-toolkit trains for wan21.
LORA_TARGETS = (
    "self_attn.q",
    "self_attn.k",
    "self_attn.v",
    "self_attn.o",
    "cross_attn.q",
    "cross_attn.k",
    "cross_attn.v",
    "cross_attn.o",
    "ffn.0",
    "ffn.2",
)


@dataclass(frozen=True)
class WanShape:
    """The few dimensions a LoRA file depends on (the last five the same for every Wan 2.1 T2V size)."""

    dim: int
    ffn_dim: int
    num_layers: int
    text_dim: int = 4096
    freq_dim: int = 256
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)

    @classmethod
    def of(cls, transformer_config: dict) -> WanShape:
        c = transformer_config
        return cls(
            c["num_attention_heads"] * c["attention_head_dim"],
            c["ffn_dim"],
            c["num_layers"],
            text_dim=c["text_dim"],
            freq_dim=c["freq_dim"],
            in_channels=c["in_channels"],
            out_channels=c["out_channels"],
            patch_size=tuple(c["patch_size"]),
        )
