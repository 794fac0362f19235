"""Encoding: exact frame count and fps in H.264/yuv420p, odd sizes, the embedded record, the preview WebP."""

import io

import numpy as np
from PIL import Image

from tests.mp4 import read_mp4, read_mp4_record
from workers.pipeline.video import webp_bytes, write_mp4


def frames(count, height, width):
    ramp = np.linspace(0, 255, count * height * width * 3) % 256
    return ramp.reshape(count, height, width, 3).astype(np.uint8)


def test_mp4_keeps_frame_count_size_and_fps(tmp_path):
    path = write_mp4(frames(17, 64, 96), tmp_path / "a.mp4", fps=24, metadata={"seed": 5, "prompt": "a=b; c"})
    decoded, meta = read_mp4(path)
    assert decoded.shape == (17, 64, 96, 3)
    assert meta["fps"] == 24
    assert read_mp4_record(path) == {"seed": 5, "prompt": "a=b; c"}


def test_odd_sizes_are_padded_to_even(tmp_path):
    decoded, _ = read_mp4(write_mp4(frames(3, 33, 51), tmp_path / "odd.mp4", fps=8))
    assert decoded.shape == (3, 34, 52, 3)


def test_webp_is_animated_like_training_previews():
    image = Image.open(io.BytesIO(webp_bytes(frames(5, 32, 32), fps=16)))
    assert image.format == "WEBP" and image.n_frames == 5 and image.info["loop"] == 0
    image.seek(1)
    image.load()
    assert image.info["duration"] == 62  # int(1000 / fps) ms per frame
