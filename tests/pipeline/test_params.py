"""Resolving request prompts: defaults, snapping, seeds, trigger words, ai-toolkit inline flags."""

import pytest

from workers.pipeline.params import (
    AITOOLKIT_FLAGS,
    PromptError,
    parse_aitoolkit_prompt,
    resolve_prompt,
    snap_frames,
    snap_size,
)


@pytest.mark.parametrize("frames,expected", [(1, 1), (2, 1), (4, 5), (5, 5), (40, 41), (41, 41), (43, 41), (81, 81)])
def test_frames_round_like_diffusers(frames, expected):
    assert snap_frames(frames) == expected


@pytest.mark.parametrize("size,expected", [(64, 64), (65, 64), (1000, 992), (1024, 1024), (4096, 4096)])
def test_sizes_floor_to_16(size, expected):
    assert snap_size(size) == expected


def test_flags_are_parsed_as_ai_toolkit_does():
    prompt, flags = parse_aitoolkit_prompt(
        "a cat on a sofa --n blurry, low quality --w 832 --h 480 --seed 7 "
        "--cfg 5.5 --steps 30 --m 0.8 --frames 81 --unknown x"
    )
    assert prompt == "a cat on a sofa"
    assert flags == {
        "neg": "blurry, low quality",
        "width": 832,
        "height": 480,
        "seed": 7,
        "guidance_scale": 5.5,
        "sample_steps": 30,
        "lora_scale": 0.8,
        "num_frames": 81,
    }


@pytest.mark.parametrize(
    "text,field",
    [
        ("x --w wide", "width"),
        ("x --steps 0", "sample_steps"),
        ("x --m 3", "lora_scale"),
        ("x --cfg 25", "guidance_scale"),
    ],
)
def test_bad_flag_values_are_errors(text, field):
    with pytest.raises(PromptError) as err:
        parse_aitoolkit_prompt(text)
    assert err.value.field == field


def test_ai_toolkit_semantics_apply_flags_and_always_replace_placeholders():
    params = resolve_prompt(
        {"prompt": "[trigger] as [name] --w 512 --h 256 --m -0.5 --n ugly", "width": 1024},
        index=2,
        semantics="ai-toolkit",
        name="my_lora",
    )
    assert (params.prompt, params.neg, params.width, params.height) == (" as my_lora", "ugly", 512, 256)
    assert (params.lora_scale, params.seed) == (-0.5, 44)
    assert resolve_prompt({"prompt": "[trigger] x"}, index=0, semantics="ai-toolkit").prompt == " x"


def test_reference_semantics_keep_flags_as_text():
    params = resolve_prompt({"prompt": "[trigger] x --w 512"}, index=0, trigger_word="sks")
    assert (params.prompt, params.width, params.lora_scale) == ("sks x --w 512", 1024, None)


NUMERIC_FLAGS = ["w", "h", "seed", "d", "cfg", "l", "steps", "s", "m", "network_multiplier", "frames", "fps"]


@pytest.mark.parametrize("flag", NUMERIC_FLAGS)
@pytest.mark.parametrize(
    "value", ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1_0", "0x10", "٣٠", "1.5.1", "", "--"]
)
def test_numeric_flags_take_only_finite_decimal_numbers(flag, value):
    # Python's float() takes "nan", and NaN passes every range check (all comparisons are false).
    with pytest.raises(PromptError) as err:
        parse_aitoolkit_prompt(f"x --{flag} {value}")
    assert err.value.field == AITOOLKIT_FLAGS[flag]


@pytest.mark.parametrize("flag", ["w", "seed", "cfg", "m", "frames"])
def test_integers_past_any_limit_are_out_of_range_whatever_their_length(flag):
    for digits in (20, 31, 5000):
        with pytest.raises(PromptError) as err:
            parse_aitoolkit_prompt(f"x --{flag} {'9' * digits}")
        assert "outside" in err.value.message and len(err.value.message) < 200


def test_decimal_spellings_ai_toolkit_writes_still_parse():
    _, flags = parse_aitoolkit_prompt("x --cfg 5. --m -.5 --w +512 --seed -1 --l 1e1")
    assert flags == {"guidance_scale": 10.0, "lora_scale": -0.5, "width": 512, "seed": -1}
