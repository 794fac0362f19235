"""Crafted safetensors headers: every one is refused with a LORA_* code (or read safely), never a crash.

The files are built byte by byte (the header as JSON, the tensor data as zeros), so each test states
exactly which rule of the format or of a Wan LoRA it breaks.
"""

import io
import json
import struct
from dataclasses import replace

import pytest

from tests.conftest import TINY_SHAPE
from workers.pipeline.lora_files import LoraFileError, check_compatible, describe, inspect_lora_file, read_header
from workers.pipeline.shapes import LORA_TARGETS

DIM, FFN = TINY_SHAPE.dim, TINY_SHAPE.ffn_dim
SIZES = {"F32": 4, "BF16": 2, "F16": 2, "I8": 1}


def layer_shapes(module: str, rank: int = 4) -> tuple[list[int], list[int]]:
    fan_in, fan_out = {"ffn.0": (DIM, FFN), "ffn.2": (FFN, DIM)}.get(module, (DIM, DIM))
    return [rank, fan_in], [fan_out, rank]


def tiny_lora(rank: int = 4, blocks: int = 2) -> dict[str, tuple[str, list[int]]]:
    """An ai-toolkit LoRA for the tiny model as {name: (dtype, shape)}."""
    tensors = {}
    for block in range(blocks):
        for module in LORA_TARGETS:
            down, up = layer_shapes(module, rank)
            tensors[f"diffusion_model.blocks.{block}.{module}.lora_A.weight"] = ("BF16", down)
            tensors[f"diffusion_model.blocks.{block}.{module}.lora_B.weight"] = ("BF16", up)
    return tensors


def table(tensors: dict[str, tuple[str, list[int]]]) -> tuple[dict, int]:
    """A well-formed tensor table (tensors end to end from 0) and the data size it needs."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = SIZES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    return header, offset


def file_bytes(header: dict | str, data_size: int, metadata: dict | None = None) -> bytes:
    if isinstance(header, dict):
        header = json.dumps({**({"__metadata__": metadata} if metadata is not None else {}), **header})
    raw = header.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw + bytes(data_size)


def lora_bytes(tensors=None, metadata=None, extra: int = 0, **entry_changes) -> bytes:
    """A LoRA file, with `entry_changes` ({tensor name: {field: value}}) applied to its tensor table."""
    header, size = table(tensors if tensors is not None else tiny_lora())
    for name, change in entry_changes.items():
        header[name] = {**header[name], **change}
    return file_bytes(header, size + extra, metadata)


def code_of(data: bytes) -> str:
    with pytest.raises(LoraFileError) as err:
        inspect_lora_file(io.BytesIO(data), len(data))
    assert "/" not in err.value.message.replace("->", "")  # messages name tensors, never a path
    return err.value.code


def info_of(data: bytes):
    return inspect_lora_file(io.BytesIO(data), len(data))


Q_A = "diffusion_model.blocks.0.self_attn.q.lora_A.weight"
Q_B = "diffusion_model.blocks.0.self_attn.q.lora_B.weight"
FFN2_A = "diffusion_model.blocks.1.ffn.2.lora_A.weight"


def test_the_well_formed_tiny_lora_reads():
    info = info_of(lora_bytes())
    assert (info.key_format, info.rank, info.hidden_size, info.ffn_dim, info.num_blocks) == ("ai-toolkit", 4, 24, 32, 2)
    check_compatible(info, shape=TINY_SHAPE, model_id="wan21_14b")


# --- safetensors' own rules --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offsets",
    [
        pytest.param([1.0, 5.0], id="floats"),
        pytest.param(["0", "192"], id="strings"),
        pytest.param([True, False], id="booleans"),
        pytest.param([0], id="one-number"),
        pytest.param([0, 192, 384], id="three-numbers"),
        pytest.param([-192, 0], id="negative"),
        pytest.param([0, 2**64], id="past-64-bits"),
        pytest.param(None, id="null"),
        pytest.param({"start": 0, "end": 192}, id="object"),
    ],
)
def test_data_offsets_must_be_two_non_negative_integers(offsets):
    assert code_of(lora_bytes(**{Q_A: {"data_offsets": offsets}})) == "LORA_HEADER_INVALID"


def test_offsets_ending_before_they_start_are_refused():
    assert code_of(lora_bytes(**{Q_A: {"data_offsets": [192, 0]}})) == "LORA_HEADER_INVALID"


def test_overlapping_gapped_or_misplaced_tensors_are_refused():
    header, size = table(tiny_lora())
    names = list(header)
    first, second = header[names[0]]["data_offsets"], header[names[1]]["data_offsets"]
    overlapping = {**header, names[1]: {**header[names[1]], "data_offsets": first}}  # two tensors on one span
    assert code_of(file_bytes(overlapping, size)) == "LORA_HEADER_INVALID"
    swapped = {**header, names[0]: {**header[names[0]], "data_offsets": second}}  # the first span unused
    assert code_of(file_bytes(swapped, size)) == "LORA_HEADER_INVALID"
    shifted = {name: {**spec, "data_offsets": [o + 2 for o in spec["data_offsets"]]} for name, spec in header.items()}
    assert code_of(file_bytes(shifted, size + 2)) == "LORA_HEADER_INVALID"  # not starting at 0


def test_a_tensor_past_the_end_is_truncation_and_bytes_after_the_last_are_refused():
    data = lora_bytes()
    assert code_of(data[:-1]) == "LORA_FILE_TRUNCATED"
    assert code_of(data + b"\x00") == "LORA_HEADER_INVALID"
    assert code_of(lora_bytes(extra=4096)) == "LORA_HEADER_INVALID"


def test_a_byte_count_that_disagrees_with_shape_and_dtype_is_refused():
    header, size = table(tiny_lora())
    start, end = header[Q_A]["data_offsets"]
    assert code_of(lora_bytes(**{Q_A: {"dtype": "F32"}})) == "LORA_HEADER_INVALID"  # twice the bytes
    assert code_of(lora_bytes(**{Q_A: {"shape": [4, 25]}})) == "LORA_HEADER_INVALID"
    assert end - start == 4 * 24 * 2


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param("4x24", id="text"),
        pytest.param([4, -24], id="negative"),
        pytest.param([4.0, 24.0], id="floats"),
        pytest.param([True, 24], id="boolean"),
        pytest.param([[4], [24]], id="nested"),
        pytest.param([4, None], id="null"),
        pytest.param({"0": 4}, id="object"),
        pytest.param([2**64, 1], id="dim-past-64-bits"),
        pytest.param([2**40, 2**40], id="product-overflows"),
        pytest.param([2**40, 2**40, 0], id="product-overflows-before-a-zero"),
    ],
)
def test_shapes_must_be_lists_of_non_negative_ints_whose_size_fits(shape):
    assert code_of(lora_bytes(**{Q_A: {"shape": shape}})) == "LORA_HEADER_INVALID"


@pytest.mark.parametrize("dtype", ["F128", "f32", "", "float32", 5, None, ["F32"], {"F32": 1}])
def test_unknown_dtypes_are_refused(dtype):
    assert code_of(lora_bytes(**{Q_A: {"dtype": dtype}})) == "LORA_HEADER_INVALID"


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param([], id="list"),
        pytest.param("F32", id="text"),
        pytest.param({"dtype": "BF16", "shape": [4, 24]}, id="no-offsets"),
        pytest.param(None, id="null"),
    ],
)
def test_tensor_entries_that_are_not_objects_with_three_fields_are_refused(entry):
    header, size = table(tiny_lora())
    assert code_of(file_bytes({**header, Q_A: entry}, size)) == "LORA_HEADER_INVALID"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param('{"__metadata__": {"a": NaN}}', id="nan-in-metadata"),
        pytest.param('{"__metadata__": {"a": "b"}, "x": Infinity}', id="infinity"),
        pytest.param('{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, -Infinity]}}', id="-infinity"),
        pytest.param('{"x": ' + "[" * 100_000 + "]" * 100_000 + "}", id="nested-100000"),
        pytest.param('{"__metadata__": ' + '{"a":' * 50_000 + "1" + "}" * 50_001, id="nested-objects"),
    ],
)
def test_json_that_safetensors_refuses_is_refused(raw):
    assert code_of(file_bytes(raw, 0)) == "LORA_HEADER_INVALID"


@pytest.mark.parametrize(
    "metadata",
    [{"software": "a\x00b"}, {"a\x00": "b"}, {"name": "\ud800"}],
    ids=["nul-value", "nul-key", "surrogate"],
)
def test_metadata_the_database_cannot_store_is_refused(metadata):
    assert code_of(lora_bytes(metadata=metadata)) == "LORA_HEADER_INVALID"


def test_a_tensor_name_the_database_cannot_store_is_refused():
    tensors = tiny_lora()
    tensors["diffusion_model.blocks.0.self_attn.q\x00.lora_A.weight"] = tensors.pop(Q_A)
    assert code_of(lora_bytes(tensors)) in ("LORA_HEADER_INVALID",)


# --- metadata JSON: odd values are ignored, never a crash --------------------------------------------------------

NESTED = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    "value",
    [
        '{"name": "ai-toolkit", "version": NaN}',
        '{"version": Infinity}',
        '{"version": 1e400}',
        '{"version": ' + "[" * 500 + "]" * 500 + "}",
        NESTED,
        '{"version": "1\\u0000"}',
        '{"version": "\\ud800"}',
        "1" * 5000,
        "not json",
    ],
)
def test_odd_software_metadata_is_dropped_not_a_crash(value):
    info = info_of(lora_bytes(metadata={"software": value}))
    assert info.software_version in (None, "1e400", "inf")  # only text and finite numbers are kept
    json.dumps(info.as_dict(), allow_nan=False)  # what the database stores is strict JSON


@pytest.mark.parametrize(
    "frequency",
    [
        '{"1_x": {"sks": Infinity, "man": 2}}',
        '{"1_x": {"sks": NaN}}',
        '{"1_x": {"sks": 1e400, "man": 2}}',
        '{"1_x": {"sks": ' + "1" * 5000 + "}}",
        '{"1_x": {"a\\u0000b": 5, "man": 2}}',
        NESTED,
    ],
)
def test_odd_tag_frequencies_are_dropped_not_a_crash(frequency):
    info = info_of(lora_bytes(metadata={"ss_tag_frequency": frequency}))
    assert info.trigger_words in ([], ["man"])


@pytest.mark.parametrize(
    "training", ['{"step": NaN}', '{"step": Infinity, "epoch": 1e400}', NESTED, '{"step": ' + "9" * 5000 + "}"]
)
def test_odd_training_info_is_dropped_not_a_crash(training):
    info = info_of(lora_bytes(metadata={"training_info": training}))
    assert (info.training_step, info.training_epoch) == (None, None)


# --- every LoRA weight against its pair and its layer ------------------------------------------------------------


def without(*names):
    return {k: v for k, v in tiny_lora().items() if k not in names}


def replaced(name, shape, dtype="BF16"):
    return {**tiny_lora(), name: (dtype, shape)}


@pytest.mark.parametrize(
    "tensors",
    [
        pytest.param({k: v for k, v in tiny_lora().items() if ".lora_B." in k}, id="only-lora-B"),
        pytest.param({k: v for k, v in tiny_lora().items() if ".lora_A." in k}, id="only-lora-A"),
        pytest.param(without(Q_A), id="one-B-without-its-A"),
        pytest.param(without(FFN2_A.replace("lora_A", "lora_B")), id="one-A-without-its-B"),
        pytest.param(replaced(Q_B, [DIM, 3]), id="rank-mismatch"),
        pytest.param(replaced(Q_A, [3, DIM]), id="rank-mismatch-on-A"),
        pytest.param({**replaced(Q_A, [DIM + 1, DIM]), Q_B: ("BF16", [DIM, DIM + 1])}, id="rank-larger-than-the-layer"),
        pytest.param({**replaced(Q_A, [0, DIM]), Q_B: ("BF16", [DIM, 0])}, id="rank-zero"),
        pytest.param(replaced(Q_A, [4, DIM, 1]), id="three-dimensional"),
        pytest.param(replaced(Q_A, [4 * DIM]), id="one-dimensional"),
        pytest.param(replaced(Q_A, [4, DIM], "I8"), id="integer-weights"),
        pytest.param({**tiny_lora(), "diffusion_model.blocks.0.ffn.9.alpha": ("F32", [])}, id="alpha-of-nothing"),
        pytest.param({**tiny_lora(), "diffusion_model.blocks.0.ffn.0.alpha": ("F32", [2])}, id="alpha-of-two-numbers"),
        pytest.param(
            {**without(Q_A, Q_B), Q_A.replace("lora_A", "lora_down"): ("BF16", [4, DIM]), Q_B: ("BF16", [DIM, 4])},
            id="mixed-formats",
        ),
        pytest.param(
            {**tiny_lora(), "diffusion_model.time_projection.1.lora_A.weight": ("BF16", [4, DIM])},
            id="outside-the-blocks-without-its-B",
        ),
    ],
)
def test_broken_pairs_and_ranks_are_refused(tensors):
    assert code_of(lora_bytes(tensors)) == "LORA_HEADER_INVALID"


@pytest.mark.parametrize(
    "tensors",
    [
        pytest.param(replaced(FFN2_A, [4, FFN + 1]), id="ffn2-of-block-1-wrong-input"),
        pytest.param(replaced(FFN2_A.replace("lora_A", "lora_B"), [DIM + 8, 4]), id="ffn2-wrong-output"),
        pytest.param(
            replaced("diffusion_model.blocks.1.cross_attn.v.lora_B.weight", [DIM * 2, 4]), id="cross-attn-v-wrong"
        ),
        pytest.param(replaced("diffusion_model.blocks.0.ffn.0.lora_A.weight", [4, DIM * 2]), id="ffn0-wrong-input"),
        pytest.param(
            {
                **tiny_lora(),
                "diffusion_model.blocks.1.self_attn.k.lora_A.weight": ("BF16", [4, 48]),
                "diffusion_model.blocks.1.self_attn.k.lora_B.weight": ("BF16", [48, 4]),
            },
            id="one-layer-of-another-model",
        ),
        pytest.param(
            {
                **tiny_lora(),
                "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight": ("BF16", [4, DIM]),
                "diffusion_model.blocks.0.cross_attn.k_img.lora_B.weight": ("BF16", [DIM, 4]),
            },
            id="an-i2v-layer",
        ),
        pytest.param(
            {
                **tiny_lora(),
                "diffusion_model.blocks.0.modulation.lora_A.weight": ("BF16", [4, DIM]),
                "diffusion_model.blocks.0.modulation.lora_B.weight": ("BF16", [DIM, 4]),
            },
            id="an-unknown-layer",
        ),
        pytest.param(
            {k.replace("blocks.1.", "blocks.01."): v for k, v in tiny_lora().items()}, id="block-with-leading-zero"
        ),
        pytest.param(
            {k.replace("blocks.1.", f"blocks.{'9' * 5000}."): v for k, v in tiny_lora().items()}, id="block-5000-digits"
        ),
    ],
)
def test_layers_that_do_not_fit_a_wan_block_are_a_model_mismatch(tensors):
    assert code_of(lora_bytes(tensors)) == "LORA_MODEL_MISMATCH"


@pytest.mark.parametrize(
    "changes,fits",
    [
        ({}, True),
        ({"num_layers": 3}, True),
        ({"ffn_dim": FFN * 2}, False),
        ({"dim": DIM * 2}, False),
        ({"num_layers": 1}, False),
    ],
)
def test_check_compatible_compares_every_dimension(changes, fits):
    info = info_of(lora_bytes())
    if fits:
        check_compatible(info, shape=replace(TINY_SHAPE, **changes), model_id="wan21_14b")
    else:
        with pytest.raises(LoraFileError) as err:
            check_compatible(info, shape=replace(TINY_SHAPE, **changes), model_id="wan21_14b")
        assert err.value.code == "LORA_MODEL_MISMATCH"


def test_a_lora_of_feed_forward_layers_only_still_has_its_hidden_size():
    tensors = {k: v for k, v in tiny_lora().items() if ".ffn." in k}
    info = info_of(lora_bytes(tensors))
    assert (info.hidden_size, info.ffn_dim, info.target_modules) == (DIM, FFN, ["ffn.0", "ffn.2"])


def test_describe_of_a_table_read_elsewhere_applies_the_same_rules():
    header, size = table(without(Q_A))
    read_header(io.BytesIO(file_bytes(header, size)), len(file_bytes(header, size)))
    with pytest.raises(LoraFileError):
        describe(header, {})
