"""Reading MP4s back in tests: decoded frames, stream facts and the record the worker embedded."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np


def read_mp4(path: str | Path) -> tuple[np.ndarray, dict]:
    """Decode an MP4 back to uint8 frames and ffmpeg's stream facts (size, fps)."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(height, width, 3) for f in reader]
    return np.stack(frames), meta


def read_mp4_record(path: str | Path) -> dict:
    """The JSON record `write_mp4` embedded in the file's comment tag ({} when there is none)."""
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-f", "ffmetadata", "-"],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in result.stdout.splitlines():
        if line.startswith("comment="):
            return json.loads(
                line[len("comment=") :]
                .replace("\\=", "=")
                .replace("\\;", ";")
                .replace("\\#", "#")
                .replace("\\\\", "\\")
            )
    return {}
