"""Compile work kept across worker processes and hosts, so a restarted worker is ready in seconds.

`torch.compile` spends tens of seconds to minutes per video size (exact mode's blocks, fast mode's
fp8 blocks); almost all of it is inductor's codegen and Triton's kernel builds, which torch caches
by content. `CompileCache(folder)` points those caches at `folder` (a volume every worker of a host
mounts) and, after a warm-up, writes torch's portable cache artifacts (`torch.compiler.save_cache_artifacts`)
to `folder/artifacts.bin`: a worker on another host given that file loads it before compiling and
skips the same work. Both are keyed by torch itself on the model's graphs, the torch version and the
card, so a stale entry is never used, only missed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts.bin"


class CompileCache:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def artifacts(self) -> Path:
        return self.folder / ARTIFACTS

    def open(self) -> float:
        """Use the folder for this process's compile caches and load the portable artifacts found there;
        call before anything compiles. Returns the seconds spent loading (0 without artifacts)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.folder / "inductor")
        os.environ["TRITON_CACHE_DIR"] = str(self.folder / "triton")
        if not self.artifacts.is_file():
            return 0.0
        start = time.perf_counter()
        try:  # None: bytes torch does not recognise (written by another torch, or damaged)
            loaded = torch.compiler.load_cache_artifacts(self.artifacts.read_bytes()) is not None
        except Exception:
            loaded = False
        if not loaded:
            log.warning("could not load the compile cache artifacts in %s; compiling afresh", self.artifacts)
            return 0.0
        seconds = time.perf_counter() - start
        log.info("loaded compile cache artifacts (%d bytes) in %.1fs", self.artifacts.stat().st_size, seconds)
        return seconds

    def save(self) -> int:
        """Write what this process compiled as portable artifacts (atomically: a worker starting meanwhile
        reads the old file or the new one). Returns the bytes written (0 when nothing was compiled)."""
        saved = torch.compiler.save_cache_artifacts()
        if not saved:
            return 0
        data, _info = saved
        with tempfile.NamedTemporaryFile(dir=self.folder, prefix=f".{ARTIFACTS}.", delete=False) as tmp:
            try:
                tmp.write(data)
                tmp.flush()
                os.chmod(tmp.name, 0o644)  # other workers of the volume may run as other users
                os.replace(tmp.name, self.artifacts)
            except BaseException:  # a full disk or a kill: leave no partial file on the shared volume
                os.unlink(tmp.name)
                raise
        return len(data)
