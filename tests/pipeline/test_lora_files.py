"""Reading LoRA headers: key formats, shapes, base model, ai-toolkit metadata, compatibility."""

import io
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import TINY_SHAPE
from workers.pipeline.checkpoints import write_aitoolkit_lora
from workers.pipeline.lora_files import LoraFileError, check_compatible, inspect_lora, read_header
from workers.pipeline.shapes import WanShape


def test_ai_toolkit_lora_of_the_14b_shape(tmp_path):
    path = write_aitoolkit_lora(
        tmp_path / "l.safetensors",
        shape=WanShape(5120, 13824, 40),
        rank=1,
        software_version="0.9.6",
        training_step=2500,
        trigger_words=("ohwx", "man"),
    )
    info = inspect_lora(path)
    assert (info.key_format, info.rank, info.alpha, info.num_blocks, info.hidden_size) == (
        "ai-toolkit",
        1,
        1.0,
        40,
        5120,
    )
    assert (info.base_model, info.dtype, info.tensor_count) == ("wan21_14b", "BF16", 800)
    assert info.target_modules == sorted(
        [
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
        ]
    )
    assert (info.software_version, info.training_step, info.trigger_words) == ("0.9.6", 2500, ["ohwx", "man"])
    check_compatible(info, shape=WanShape(5120, 13824, 40), model_id="wan21_14b")


@pytest.mark.parametrize(
    "key,fmt",
    [
        ("transformer.blocks.{b}.attn1.to_q.lora_{s}.weight", "diffusers"),
        ("diffusion_model.blocks.{b}.self_attn.q.lora_{s}.weight", "kohya"),
        ("lora_unet_blocks_{b}_self_attn_q.lora_{s}.weight", "musubi"),
    ],
)
def test_other_key_formats(tmp_path, key, fmt):
    down, up = ("A", "B") if fmt == "diffusers" else ("down", "up")
    tensors = {}
    for block in range(30):
        tensors[key.format(b=block, s=down)] = torch.zeros(8, 1536, dtype=torch.float16)
        tensors[key.format(b=block, s=up)] = torch.zeros(1536, 8, dtype=torch.float16)
        if fmt != "diffusers":
            tensors[key.format(b=block, s=down).replace(f".lora_{down}.weight", ".alpha")] = torch.tensor(4.0)
    save_file(tensors, str(tmp_path / "l.safetensors"), metadata={"software": json.dumps({"name": "musubi"})})
    info = inspect_lora(tmp_path / "l.safetensors")
    assert (info.key_format, info.rank, info.num_blocks, info.base_model) == (fmt, 8, 30, "wan21_1b")
    assert info.alpha == (8.0 if fmt == "diffusers" else None)  # None: alpha is stored per module in the file
    with pytest.raises(LoraFileError) as err:
        check_compatible(info, shape=WanShape(5120, 13824, 40), model_id="wan21_14b")
    assert err.value.code == "LORA_MODEL_MISMATCH" and "wan21_1b" in err.value.message


def test_tiny_lora_fits_only_the_tiny_model(tmp_path):
    info = inspect_lora(write_aitoolkit_lora(tmp_path / "t.safetensors", shape=TINY_SHAPE))
    assert (info.hidden_size, info.base_model) == (24, None)
    check_compatible(info, shape=TINY_SHAPE, model_id="wan21_14b")


def _code_of(data: bytes) -> str:
    with pytest.raises(LoraFileError) as err:
        read_header(io.BytesIO(data), len(data))
    return err.value.code


@pytest.mark.parametrize(
    "data,code",
    [
        pytest.param(b"These are my training notes.\n" * 4, "LORA_NOT_SAFETENSORS", id="text-file"),
        pytest.param(struct.pack("<Q", 3) + b"[1]", "LORA_NOT_SAFETENSORS", id="header-not-an-object"),
        pytest.param(struct.pack("<Q", 1) + b"{", "LORA_NOT_SAFETENSORS", id="header-too-short"),
        pytest.param(struct.pack("<Q", 9 * 2**20) + b"{" + b" " * 100, "LORA_HEADER_TOO_LARGE", id="huge-real-header"),
        pytest.param(struct.pack("<Q", 100) + b"{}", "LORA_FILE_TRUNCATED", id="header-past-the-end"),
        pytest.param(struct.pack("<Q", 0), "LORA_NOT_SAFETENSORS", id="only-the-length"),
    ],
)
def test_the_header_must_open_with_a_brace_before_its_length_is_believed(data, code):
    assert _code_of(data) == code


def test_a_text_file_says_plainly_it_is_not_safetensors():
    with pytest.raises(LoraFileError) as err:
        read_header(io.BytesIO(b"hello world, plain text"), 23)
    assert err.value.message == "This file is not a safetensors file."
