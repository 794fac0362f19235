"""Where the client finds its server and token: flags, then WANQ_URL / WANQ_TOKEN, then the file `wanq login`
writes (platformdirs' user config dir, e.g. ~/.config/wanq/config.json on Linux, mode 0600)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs


def config_path() -> Path:
    override = os.environ.get("WANQ_CONFIG")
    return Path(override) if override else platformdirs.user_config_path("wanq") / "config.json"


def load() -> dict:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(url: str, token: str) -> Path:
    """Write {url, token} readable by the user alone (created 0600, so never briefly world-readable)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older tmp file keeps its mode through O_CREAT: make it private before the token
    with os.fdopen(fd, "w") as fh:
        json.dump({"url": url, "token": token}, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)
    return path


@dataclass
class Settings:
    url: str | None
    token: str | None


def resolve(url: str | None, token: str | None) -> Settings:
    """Flags, then the environment, then the stored login; the stored token only goes to the stored URL."""
    stored = load()
    url = url or os.environ.get("WANQ_URL") or stored.get("url")
    token = token or os.environ.get("WANQ_TOKEN")
    if not token and url and _same(url, stored.get("url")):
        token = stored.get("token")
    return Settings(url=url, token=token)


def _same(a: str, b) -> bool:
    return isinstance(b, str) and a.rstrip("/") == b.rstrip("/")
