"""How long a sweep's comparison grid takes on the CPU worker, and how much memory it holds: composes a grid of
synthetic cells (by default 3x3 of 832x480x81 at 16 fps, the default request's video) and prints one JSON line.

    python bench/grid.py                       # 3x3 of 832x480x81
    python bench/grid.py --keep /tmp/grid      # also keep grid.mp4, grid.png and frame.png (the middle frame)

The cells are written first, frame by frame, with moving content (a drifting pattern and a square crossing the
tile), so the encoder does real work. Memory is sampled every 20 ms over the whole composition: this process
plus its ffmpeg children (one reader per cell, one encoder).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.grids import Tile, compose_grid  # noqa: E402
from workers.pipeline.video import open_mp4_writer  # noqa: E402


def write_cell(path: Path, *, width: int, height: int, frames: int, fps: int, seed: int) -> None:
    """One cell: a tinted interference pattern drifting with time and a white square crossing the tile."""
    rng = np.random.default_rng(seed)
    tint = rng.uniform(0.3, 1.0, 3)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    writer = open_mp4_writer(path, width=width, height=height, fps=fps)
    for index in range(frames):
        phase = index / frames * 2 * np.pi
        wave = 0.5 + 0.25 * np.sin(xs / (17 + seed) + phase) + 0.25 * np.cos(ys / (23 + seed) - 2 * phase)
        frame = (wave[..., None] * tint * 255).astype(np.uint8)
        side = height // 5
        left = (index * (width - side)) // max(1, frames - 1)
        frame[height // 2 - side // 2 : height // 2 + side // 2, left : left + side] = 255
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def family_rss_mib() -> dict[str, float]:
    """Resident now: this process, its ffmpeg readers (one per cell) and its ffmpeg encoder, and all together."""
    pid = os.getpid()
    usage = {"python": rss_mib(pid), "readers": 0.0, "encoder": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                role = "encoder" if b"libx264" in Path(f"/proc/{child}/cmdline").read_bytes() else "readers"
                usage[role] += rss_mib(int(child))
            except (FileNotFoundError, ProcessLookupError):
                pass  # ended between the listing and the read
    usage["total"] = sum(usage.values())
    return usage


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--columns", type=int, default=3)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--keep", type=Path, help="a folder to keep grid.mp4, grid.png and frame.png in")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out = args.keep or folder
        out.mkdir(parents=True, exist_ok=True)
        tiles = []
        for r in range(args.rows):
            row = []
            for c in range(args.columns):
                path = folder / f"cell_{r}_{c}.mp4"
                seed = r * args.columns + c
                write_cell(path, width=args.width, height=args.height, frames=args.frames, fps=args.fps, seed=seed)
                row.append(Tile(path))
            tiles.append(row)

        before = family_rss_mib()
        peak, done = [before], threading.Event()

        def sample():
            while not done.wait(0.02):
                peak.append(family_rss_mib())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        layout = compose_grid(
            tiles,
            row_labels=[f"my_lora_{(r + 1) * 1000:09d}.safetensors" for r in range(args.rows)],
            column_labels=[f"{0.5 * (c + 1):.2f}" for c in range(args.columns)],
            title="sks a person walking on a beach at sunset, golden hour, slow dolly shot",
            video_path=out / "grid.mp4",
            image_path=out / "grid.png",
            row_title="checkpoint",
            column_title="LoRA multiplier",
        )
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        result = {
            "cells": f"{args.rows}x{args.columns} of {args.width}x{args.height}x{args.frames} @ {args.fps} fps",
            "grid": f"{layout.width}x{layout.height}x{layout.num_frames}",
            "seconds": round(seconds, 1),
            "grid_fps": round(layout.num_frames / seconds, 2),
            "peak_rss_mib_python": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_rss_mib_readers": round(max(sample["readers"] for sample in peak)),
            "peak_rss_mib_encoder": round(max(sample["encoder"] for sample in peak)),
            "peak_rss_mib_all": round(max(sample["total"] for sample in peak)),
            "rss_mib_before": round(before["python"]),
            "mp4_mib": round((out / "grid.mp4").stat().st_size / 2**20, 1),
            "cpus": os.cpu_count(),
        }
        if args.keep:
            reader = imageio_ffmpeg.read_frames(str(out / "grid.mp4"))
            width, height = next(reader)["size"]
            for index, frame in enumerate(reader):
                if index == layout.num_frames // 2:
                    Image.frombytes("RGB", (width, height), frame).save(out / "frame.png")
            reader.close()
        print(json.dumps(result))


if __name__ == "__main__":
    main()
