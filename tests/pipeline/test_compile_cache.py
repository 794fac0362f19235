"""Compile work survives the worker process: a second process given the first one's cache folder (or only
its portable artifacts file, as a new host would be) compiles from the cache instead of afresh."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = """
import json, sys, torch
from torch._dynamo.utils import counters
from workers.pipeline.compile_cache import CompileCache

cache = CompileCache(sys.argv[1])
cache.open()
block = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.LayerNorm(64))
compiled = torch.compile(block, fullgraph=True)
compiled(torch.randn(8, 64))
print(json.dumps({"saved": cache.save(), **counters["inductor"]}))
"""


def compile_in_a_new_process(folder) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.processes  # three Python processes compiling on the CPU: `make test` only
def test_a_second_worker_compiles_from_the_first_ones_cache(tmp_path):
    first = compile_in_a_new_process(tmp_path / "cache")
    assert first.get("fxgraph_cache_miss", 0) >= 1 and first["saved"] > 0
    artifacts = tmp_path / "cache" / "artifacts.bin"
    assert artifacts.is_file() and artifacts.stat().st_mode & 0o777 == 0o644  # readable by workers of other users
    assert not list((tmp_path / "cache").glob(".artifacts.bin.*"))  # no temporary file left beside it

    second = compile_in_a_new_process(tmp_path / "cache")  # the same host: the cache folder itself
    assert second.get("fxgraph_cache_hit", 0) >= 1 and second.get("fxgraph_cache_miss", 0) == 0

    another_host = tmp_path / "elsewhere"  # a new host: only the artifacts file travels
    another_host.mkdir()
    shutil.copy(tmp_path / "cache" / "artifacts.bin", another_host / "artifacts.bin")
    third = compile_in_a_new_process(another_host)
    assert third.get("fxgraph_cache_hit", 0) >= 1 and third.get("fxgraph_cache_miss", 0) == 0


@pytest.mark.parametrize("content", [b"not torch's artifacts", b""])
def test_a_damaged_artifacts_file_is_a_miss_not_a_load(tmp_path, monkeypatch, caplog, content):
    from workers.pipeline.compile_cache import CompileCache

    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):  # open() points them at the folder
        monkeypatch.setenv(name, str(tmp_path / "before"))
    (tmp_path / "artifacts.bin").write_bytes(content)
    assert CompileCache(tmp_path).open() == 0.0
    assert "compiling afresh" in caplog.text
