"""Frames to files: H.264 MP4 (the output), a PNG poster, and the animated WebP of training previews."""

from __future__ import annotations

import io
import json
from collections.abc import Generator
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """(F, H, W, 3) floats in [0, 1] as the pipeline returns them -> uint8."""
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def _even(frames: np.ndarray) -> np.ndarray:
    # yuv420p needs even sides; pad by repeating the last row/column.
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frames


def open_mp4_writer(
    path: str | Path, *, width: int, height: int, fps: int, metadata: dict | None = None
) -> Generator[None, np.ndarray | None, None]:
    """A started H.264/yuv420p encoder at exactly `fps`: send it contiguous uint8 (height, width, 3) frames one
    at a time, then close() it to finish the file. Sides must be even (yuv420p); `metadata` becomes the JSON
    record in the comment tag. Every MP4 the project writes goes through here, so all share one encoding."""
    params = ["-movflags", "+faststart"]
    if metadata:
        params += ["-metadata", "comment=" + json.dumps(metadata, sort_keys=True)]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=8,
        macro_block_size=1,
        output_params=params,
        ffmpeg_log_level="error",
    )
    writer.send(None)
    return writer


def write_mp4(frames: np.ndarray, path: str | Path, *, fps: int, metadata: dict | None = None) -> Path:
    """Encode uint8 frames as H.264/yuv420p at exactly `fps`, one output frame per input frame."""
    frames = _even(frames)
    height, width = frames.shape[1:3]
    writer = open_mp4_writer(path, width=width, height=height, fps=fps, metadata=metadata)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return Path(path)


def png_bytes(frame: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def webp_bytes(frames: np.ndarray, *, fps: int) -> bytes:
    """Animated WebP as ai-toolkit-inference writes Wan previews (quality 80, loop forever)."""
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(
        buf, format="WEBP", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, quality=80
    )
    return buf.getvalue()
