"""The web process runs on requirements-web.txt alone: the Dockerfile's `web` image has no torch.

A fresh interpreter makes the packages that only requirements.txt adds unimportable, then sets up
Django, imports every module under webapp/ (the web's side of workers/ comes along), builds the URL
conf and the OpenAPI schema, and runs `manage.py check`. A module that needs torch fails here, by name.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Import names of the packages requirements.txt adds to requirements-web.txt.
WORKER_ONLY = [
    "torch",
    "torchao",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "sentencepiece",
    "imageio_ffmpeg",
    "PIL",
    "numpy",
]

SCRIPT = textwrap.dedent("""
    import importlib, os, pkgutil, sys, traceback
    for name in sys.argv[1:]:
        sys.modules[name] = None  # "import name" now raises ImportError
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
    import django
    django.setup()
    import webapp

    failed = []
    names = ["webapp.urls"] + [m.name for m in pkgutil.walk_packages(webapp.__path__, "webapp.")
                               if ".migrations" not in m.name]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name)
            print(f"cannot import {name} without the worker packages:", file=sys.stderr)
            traceback.print_exc()
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")

    from django.core.management import call_command
    from django.urls import get_resolver, resolve
    from drf_spectacular.generators import SchemaGenerator

    get_resolver().check()
    resolve("/health")
    SchemaGenerator().get_schema(request=None, public=True)
    call_command("check")
    print(f"imported {len(names)} modules")
""")


def test_web_process_imports_without_worker_packages():
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *WORKER_ONLY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "imported" in proc.stdout
