"""The one warm pipeline of this worker process, built from settings on first use."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from django.conf import settings

from workers.pipeline.runtime import WanRuntime, default_device

log = logging.getLogger(__name__)
_runtime: WanRuntime | None = None


def get_runtime() -> WanRuntime:
    global _runtime
    if _runtime is None:
        device = settings.WAN_DEVICE or default_device()
        exact_compile = settings.WAN_EXACT_COMPILE and device.startswith("cuda")  # a CPU has nothing to compile
        _runtime = WanRuntime(settings.WAN_MODEL_PATH, device=device,
                              lora_budget_bytes=settings.LORA_GPU_BUDGET_BYTES, low_memory=settings.WAN_LOW_MEMORY,
                              cfg_device=settings.WAN_CFG_DEVICE, fast_mode=settings.WAN_FAST_MODE,
                              fast_compile=settings.WAN_FAST_COMPILE, exact_compile=exact_compile,
                              cp_devices=settings.WAN_CP_DEVICES)
    return _runtime.load()


def warm_up() -> None:
    """Compile both speeds for the sizes in WAN_WARMUP ("1024x1024x41,832x480x81") at worker start."""
    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in settings.WAN_WARMUP]
    if sizes:
        log.info("warmed up for %s in %.1fs", sizes, get_runtime().warm_up(sizes))


def lora_local_path(lora_file, sha256: str) -> Path:
    """A local copy of a stored LoRA, verified against its sha256 (the pipeline loads from disk)."""
    cache = Path(settings.LORA_CACHE_DIR)
    path = cache / f"{sha256}.safetensors"
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with lora_file.open("rb") as src, tempfile.NamedTemporaryFile(dir=cache, delete=False) as tmp:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            tmp.write(chunk)
    if digest.hexdigest() != sha256:
        os.unlink(tmp.name)
        raise ValueError(f"stored LoRA file does not match its sha256 {sha256}")
    shutil.move(tmp.name, path)
    return path
