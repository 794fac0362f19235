"""The GPU host: what one worker process keeps between jobs, and how it starts.

One `GpuHost` per process (`GpuHost.current()`), shaped like cog's predictor: `setup()` once at
worker start (load the model, compile the sizes in WAN_WARMUP), then `predict()` per prompt. It
owns the warm runtime (which owns the LoRA residency), local copies of stored LoRAs, and the
finisher thread that encodes and stores outputs while the GPU renders the next prompt or job.
A host that cannot load its model exits so its supervisor starts a fresh one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from django.conf import settings

from workers.pipeline.compile_cache import CompileCache
from workers.pipeline.config import RuntimeConfig, default_device
from workers.pipeline.parallel import build_runtime
from workers.pipeline.runtime import RenderResult
from workers.watchdogs import EXIT_CODE_REPLACE_ME

log = logging.getLogger(__name__)


class GpuHost:
    _current: GpuHost | None = None

    @classmethod
    def current(cls, *, create: bool = True) -> GpuHost | None:
        """This process's host (None with `create=False` before anything asked for it)."""
        if cls._current is None and create:
            cls._current = cls()
        return cls._current

    def __init__(self):
        self._runtime = None
        # One thread stores outputs in order, so the GPU goes on while ffmpeg and uploads run.
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="finisher")
        self._settlements: list[Future] = []

    # -- setup ---------------------------------------------------------------
    def setup(self) -> None:
        """Load the model and do the compile work for WAN_WARMUP's sizes before taking jobs (from
        WAN_COMPILE_CACHE where an earlier worker left it, and leaving it there for the next)."""
        cache = CompileCache(settings.WAN_COMPILE_CACHE) if settings.WAN_COMPILE_CACHE else None
        if cache:
            cache.open()
        try:
            self.runtime  # noqa: B018 - loads the model
        except Exception:  # a worker without a model would fail every job it takes
            log.exception("could not load the model; exiting")
            os._exit(EXIT_CODE_REPLACE_ME)
        sizes = [tuple(int(v) for v in size.lower().split("x")) for size in settings.WAN_WARMUP]
        try:
            if sizes:
                log.info("warmed up for %s in %.1fs", sizes, self.runtime.warm_up(sizes))
                if cache and self.on_cuda:
                    log.info("saved %d bytes of compile cache artifacts", cache.save())
        except Exception:  # jobs then compile on first use, as without a warm-up
            log.exception("warm-up failed")

    @property
    def runtime(self):
        """The warm runtime, loaded on first use from settings."""
        if self._runtime is None:
            device = settings.WAN_DEVICE or default_device()
            config = RuntimeConfig.resolve(
                settings.WAN_MODEL_PATH,
                device=device,
                lora_budget_bytes=settings.LORA_GPU_BUDGET_BYTES,
                low_memory=settings.WAN_LOW_MEMORY,
                cfg_device=settings.WAN_CFG_DEVICE,
                fast_mode=settings.WAN_FAST_MODE,
                fast_compile=settings.WAN_FAST_COMPILE,
                fast_attention=settings.WAN_FAST_ATTENTION,
                # CPU workers compile nothing and keep peft's adapters (bit for bit the reference path).
                exact_compile=settings.WAN_EXACT_COMPILE and device.startswith("cuda"),
                cp_devices=settings.WAN_CP_DEVICES,
            )
            self._runtime = build_runtime(config)
        return self._runtime.load()

    @property
    def on_cuda(self) -> bool:
        return self.runtime.device.startswith("cuda")

    # -- predict -------------------------------------------------------------
    def predict(self, params, **options) -> RenderResult:
        """Render one prompt on the warm runtime (see WanRuntime.render for the options)."""
        return self.runtime.render(params, **options)

    def lora_path(self, lora_file, sha256: str) -> Path:
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

    # -- the finisher thread ---------------------------------------------------
    def store_later(self, store: Callable, *args) -> Future:
        return self._finisher.submit(store, *args)

    def settle_later(self, settle: Callable[[], None]) -> Future:
        """Run `settle` on the finisher thread once everything stored before it is stored."""
        settlement = self._finisher.submit(settle)
        self._settlements.append(settlement)
        return settlement

    def wait_for_finisher(self, *, max_pending: int) -> None:
        """Block until at most `max_pending` jobs are still being stored (bounds frames held in memory)."""
        while True:
            self._settlements[:] = [s for s in self._settlements if not s.done()]
            if len(self._settlements) <= max_pending:
                return
            self._settlements[0].result()

    def drain(self) -> None:
        """Wait until every output handed to the finisher is stored (worker shutdown, tests)."""
        self.wait_for_finisher(max_pending=0)
