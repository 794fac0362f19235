"""Registering LoRAs: inspect the header, check it fits the model, store the file once per sha256."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import transaction

from webapp.core.catalog import DEFAULT_MODEL, model_shape
from webapp.core.errors import ApiError, Conflict, NotFound
from webapp.core.permissions import require_manage
from workers.pipeline.lora_files import LoraFileError, check_compatible, inspect_lora_file

from .fetch import lora_download, lora_url_check
from .models import Lora, Visibility
from .selectors import lora_find


def _sha256(fh: BinaryIO) -> str:
    digest = hashlib.sha256()
    fh.seek(0)
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        digest.update(chunk)
    fh.seek(0)
    return digest.hexdigest()


def _file_size(fh: BinaryIO) -> int:
    fh.seek(0, os.SEEK_END)
    size = fh.tell()
    fh.seek(0)
    return size


NAME_MAX = Lora._meta.get_field("name").max_length
PATH_MAX = Lora._meta.get_field("relative_path").max_length


def validate_upload_name(name: str) -> None:
    """Names given at upload must not look like an id, a sha256 or a LORA_ROOT path."""
    if name.isdigit() or re.fullmatch(r"[0-9a-f]{64}", name) or "/" in name or name.endswith(".safetensors"):
        raise ValidationError("A LoRA name may not be a number, a sha256, or a path.", code="invalid_name")


def lora_register(
    *,
    fh: BinaryIO,
    filename: str,
    owner=None,
    name: str | None = None,
    relative_path: str | None = None,
    trigger_word: str = "",
    default_multiplier: float = 1.0,
    base_model: str = DEFAULT_MODEL,
    visibility: str = Visibility.TEAM,
) -> Lora:
    """Validate and store a LoRA; the same bytes registered twice give the same LoRA. For files the
    service finds itself (LORA_ROOT, fetched URLs); a person's upload goes through `lora_upload`."""
    lora, _ = _register(
        fh=fh,
        filename=filename,
        owner=owner,
        name=name,
        relative_path=relative_path,
        trigger_word=trigger_word,
        default_multiplier=default_multiplier,
        base_model=base_model,
        visibility=visibility,
    )
    return lora


@dataclass(frozen=True)
class LoraUpload:
    """What an upload came to: the LoRA, and whether this upload created it."""

    lora: Lora
    created: bool

    @property
    def message(self) -> str:
        if self.created:
            return (
                f"Registered {self.lora.name}: {self.lora.key_format} LoRA, rank {self.lora.rank}, "
                f"{self.lora.num_blocks} blocks."
            )
        return f"This file is already in the library as {self.lora.name}."


def lora_upload(
    *,
    fh: BinaryIO,
    filename: str,
    owner,
    name: str | None = None,
    trigger_word: str | None = None,
    default_multiplier: float | None = None,
    visibility: str | None = None,
    base_model: str = DEFAULT_MODEL,
) -> LoraUpload:
    """A person's upload (API and page). Fields left out (None) take the header's or the defaults.
    Bytes already registered answer that LoRA (`created` False) when every field given agrees with it;
    a field that differs is refused (LORA_EXISTS, naming the LoRA and the fields) rather than dropped."""
    lora, created = _register(
        fh=fh,
        filename=filename,
        owner=owner,
        name=name,
        trigger_word=trigger_word or "",
        default_multiplier=1.0 if default_multiplier is None else default_multiplier,
        visibility=visibility or Visibility.TEAM,
        base_model=base_model,
    )
    if not created:
        given = {
            "name": name,
            "trigger_word": trigger_word or None,
            "default_multiplier": default_multiplier,
            "visibility": visibility,
        }
        differ = {
            field: {"existing": getattr(lora, field), "given": value}
            for field, value in given.items()
            if value is not None and value != getattr(lora, field)
        }
        if differ:
            raise Conflict(
                "LORA_EXISTS",
                f"This file is already in the library as {lora.name}, with a different "
                f"{', '.join(field.replace('_', ' ') for field in differ)}.",
                details={"lora": {"id": lora.pk, "name": lora.name}, "fields": differ},
            )
    return LoraUpload(lora=lora, created=created)


def _registered(*, sha256: str, owner) -> Lora | None:
    """The LoRA these bytes already are, refusing (without naming it) another user's private one."""
    existing = Lora.objects.filter(sha256=sha256).first()
    if (
        existing
        and owner is not None
        and not owner.is_staff
        and existing.visibility == Visibility.PRIVATE
        and existing.owner_id != owner.pk
    ):
        raise Conflict("LORA_EXISTS", "Another user registered this file privately; ask them to share it.")
    return existing


def _register(
    *,
    fh: BinaryIO,
    filename: str,
    owner,
    name: str | None,
    trigger_word: str,
    default_multiplier: float,
    base_model: str,
    visibility: str,
    relative_path: str | None = None,
) -> tuple[Lora, bool]:
    size = _file_size(fh)
    if size > settings.LORA_MAX_UPLOAD_BYTES:
        raise ApiError("LORA_TOO_LARGE", f"LoRA files may be at most {settings.LORA_MAX_UPLOAD_BYTES} bytes.")
    try:
        info = inspect_lora_file(fh, size)
        shape = model_shape(base_model)
        check_compatible(info, hidden_size=shape.dim, num_layers=shape.num_layers, model_id=base_model)
    except LoraFileError as exc:
        raise ApiError(exc.code, exc.message, details={"file": filename}) from None
    sha256 = _sha256(fh)
    existing = _registered(sha256=sha256, owner=owner)
    if existing:
        return existing, False
    name = name or (info.output_name or Path(filename).stem)
    if len(name) > NAME_MAX:  # names come from paths and headers: keep them unique but bounded
        name = f"{name[: NAME_MAX - 13]}-{sha256[:12]}"
    if Lora.objects.filter(name=name).exists():
        raise Conflict("LORA_NAME_TAKEN", f"A different LoRA is already named {name!r}.", details={"name": name})
    lora = Lora(
        name=name,
        owner=owner,
        relative_path=relative_path or None,
        sha256=sha256,
        size=size,
        base_model=base_model,
        trigger_word=trigger_word or (info.trigger_words[0] if info.trigger_words else ""),
        default_multiplier=default_multiplier,
        visibility=visibility,
        key_format=info.key_format,
        rank=info.rank,
        hidden_size=info.hidden_size,
        num_blocks=info.num_blocks,
        target_modules=info.target_modules,
        software_version=info.software_version or "",
        training_step=info.training_step,
        info=info.as_dict(),
    )
    try:
        with transaction.atomic():
            lora.file.save(Path(filename).name, File(fh), save=False)
            lora.save()
    except BaseException:
        lora.file.delete(save=False)  # never leave an orphan file behind
        raced = _registered(sha256=sha256, owner=owner)
        if raced:  # the same file registered by a concurrent request
            return raced, False
        raise
    return lora, True


def lora_root_file(relative_path: str) -> Path | None:
    """A file under LORA_ROOT named by a request's relative `path`, never escaping the root."""
    root = settings.LORA_ROOT.resolve()
    if not relative_path or "\x00" in relative_path or Path(relative_path).is_absolute():
        return None
    candidate = (root / relative_path).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file() or candidate.suffix != ".safetensors":
        return None
    return candidate


def lora_resolve(*, ref: str, owner=None, fetch: bool = True) -> Lora | None:
    """The LoRA a request's `path` names: registered, or a file under LORA_ROOT registered now, or a
    URL downloaded and registered now. With `fetch=False` an unregistered URL is only checked (what
    can be checked without the network) and None comes back: the CPU queue fetches it later."""
    if len(ref) > PATH_MAX:
        raise ApiError("LORA_PATH_TOO_LONG", f"LoRA paths may be at most {PATH_MAX} characters.")
    lora = lora_find(ref=ref, user=owner)
    if lora:
        return lora
    if "://" in ref:
        if not fetch:
            lora_url_check(url=ref)
            return None
        fh, filename = lora_download(url=ref)
        with fh:
            return lora_register(fh=fh, filename=filename, owner=owner, name=ref)
    path = lora_root_file(ref)
    if path is None:
        raise NotFound(
            "LORA_NOT_FOUND", f"No LoRA is registered or found under the LoRA root as {ref!r}.", details={"path": ref}
        )
    return _register_root_file(path, relative=ref, owner=owner)


def _register_root_file(path: Path, *, relative: str, owner) -> Lora:
    """A file of an ai-toolkit output folder, registered under its job/file.safetensors path."""
    with path.open("rb") as fh:
        return lora_register(
            fh=fh, filename=path.name, owner=owner, relative_path=relative, name=relative.removesuffix(".safetensors")
        )


def lora_import_dir(*, directory: Path, owner=None) -> list[tuple[str, Lora | None, str | None]]:
    """Register every *.safetensors under an ai-toolkit output folder as job_name/file."""
    results = []
    for path in sorted(Path(directory).rglob("*.safetensors")):
        relative = path.relative_to(directory).as_posix()
        try:
            results.append((relative, _register_root_file(path, relative=relative, owner=owner), None))
        except ApiError as exc:
            results.append((relative, None, f"{exc.code}: {exc.message}"))
    return results


def lora_delete(*, lora: Lora, actor=None) -> None:
    require_manage(actor, lora, what="LoRA")
    lora.file.delete(save=False)
    lora.delete()
