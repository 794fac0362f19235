"""Registering LoRAs: inspect the header, check it fits the model, store the file once per sha256."""

from __future__ import annotations

import hashlib
import os
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
from workers.pipeline.lora_files import LoraFileError, LoraInfo, check_compatible, inspect_lora_file

from .fetch import lora_download, lora_url_check
from .models import Lora, Visibility
from .selectors import (
    LORA_SUFFIX,
    lora_find,
    lora_list,
    lora_path_normalize,
    lora_preferred,
    lora_ref_kind,
    lora_versions,
)


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


TEXT_CHARS, LIST_ITEMS = 200, 64  # one name in a list of a header's facts; names in such a list
METADATA_VALUE_CHARS, METADATA_CHARS = 4096, 64 * 1024  # a header may carry megabytes of metadata


def names_bounded(values) -> list[str]:
    """A header's list of names (target modules, trigger words) as stored and shown: LIST_ITEMS of them,
    each to TEXT_CHARS."""
    return [str(value)[:TEXT_CHARS] for value in (values or [])[:LIST_ITEMS]]


def info_bounded(info: dict) -> dict:
    """A header's facts as stored and shown: lists of names to LIST_ITEMS of TEXT_CHARS, `software` to its
    name, version and repo, each metadata value to METADATA_VALUE_CHARS and all of them to METADATA_CHARS
    (`metadata_truncated` says when)."""
    bounded = dict(info)
    for key in ("target_modules", "trigger_words"):
        if isinstance(info.get(key), list):
            bounded[key] = names_bounded(info[key])
    if isinstance(info.get("software"), dict):
        bounded["software"] = {
            key: str(info["software"][key])[:TEXT_CHARS]
            for key in ("name", "version", "repo")
            if key in info["software"]
        }
    header = info.get("metadata") if isinstance(info.get("metadata"), dict) else {}
    metadata, budget, truncated = {}, METADATA_CHARS, bool(info.get("metadata_truncated"))
    for key, value in header.items():
        key, value = str(key)[:TEXT_CHARS], str(value)
        room = budget - len(key)
        if room <= 0:
            truncated = True
            break
        metadata[key] = value[: min(METADATA_VALUE_CHARS, room)]
        truncated |= len(metadata[key]) < len(value)
        budget = room - len(metadata[key])
    return {**bounded, "metadata": metadata, "metadata_truncated": truncated}


def validate_upload_name(name: str) -> None:
    """A name a person gives must be a name: not an id, a sha256, a URL or a LORA_ROOT path (see
    `lora_ref_kind`), so that no upload can answer another namespace's reference."""
    if lora_ref_kind(name) != "name":
        raise ValidationError(
            "A LoRA name may not be a number, a sha256, a URL or a path (no / or \\, no .safetensors ending).",
            code="invalid_name",
        )


def lora_name_from(raw: str) -> str:
    """A name taken from a file (its header's ss_output_name, its file name) made into a valid upload
    name: unprintable characters dropped, path separators as "_", the .safetensors ending dropped, and
    "lora-" before anything that would read as an id or a sha256."""
    name = "".join(c for c in raw if c.isprintable()).strip().replace("/", "_").replace("\\", "_")
    while name.lower().endswith(LORA_SUFFIX):
        name = name[: -len(LORA_SUFFIX)].rstrip()
    name = name or "lora"
    return name if lora_ref_kind(name) == "name" else f"lora-{name}"


def lora_root_name(relative: str) -> str:
    """The name of a LORA_ROOT file: its canonical path without the ending (a path, never looked up as
    a name), or for a file at the top a valid upload name."""
    name = relative.removesuffix(LORA_SUFFIX)
    return name if "/" in name else lora_name_from(name)


def _name_taken(name: str, *, owner) -> bool:
    """Whether a current LoRA `owner` can see has this name (names owned privately by others don't count,
    nor earlier versions, which keep the name of the version that replaced them)."""
    return lora_list(user=owner).filter(name=name, superseded=False).exists()


def lora_free_name(base: str, *, sha256: str, owner) -> str:
    """`base`, or `base`-<sha256 prefix>(-n) when taken or too long: a name no LoRA visible to `owner` has."""
    suffixes = ["", f"-{sha256[:12]}", *(f"-{sha256[:12]}-{n}" for n in range(2, 100))]
    for suffix in suffixes:
        if not suffix and len(base) > NAME_MAX:
            continue
        candidate = base[: NAME_MAX - len(suffix)] + suffix
        if not _name_taken(candidate, owner=owner):
            return candidate
    raise Conflict("LORA_NAME_TAKEN", f"Too many LoRAs are named like {base!r}.", details={"name": base})


def lora_register(
    *,
    fh: BinaryIO,
    filename: str,
    owner=None,
    name: str | None = None,
    default_name: str | None = None,
    relative_path: str | None = None,
    trigger_word: str = "",
    default_multiplier: float = 1.0,
    base_model: str = DEFAULT_MODEL,
    visibility: str = Visibility.TEAM,
) -> Lora:
    """Validate and store a LoRA; the same bytes registered twice give the same LoRA (the one `owner`
    sees). For files the service finds itself (LORA_ROOT, fetched URLs) and the admin; a person's
    upload goes through `lora_upload`. `name` is a person's choice (LORA_NAME_TAKEN when taken);
    `default_name`, else the header's or the file's name, is made unique instead."""
    lora, _ = _register(
        fh=fh,
        filename=filename,
        owner=owner,
        name=name,
        default_name=default_name,
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


def lora_registered(*, sha256: str, owner) -> Lora | None:
    """The LoRA these bytes already are for `owner`: one they can see. Another user's private copy
    does not count: `owner` then registers their own, answered exactly as any first upload is, so
    an upload never tells anyone that somebody holds the same file privately. With no owner (the
    service's own, as the draft LoRA) every private copy is another user's."""
    visible = lora_list(user=owner) if owner is not None else Lora.objects.exclude(visibility=Visibility.PRIVATE)
    return lora_preferred(visible.filter(sha256=sha256), user=owner).first()


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
    default_name: str | None = None,
    relative_path: str | None = None,
) -> tuple[Lora, bool]:
    if name is not None and lora_ref_kind(name) != "name":
        message = "A LoRA name may not be a number, a sha256, a URL or a path."
        raise ApiError("VALIDATION_ERROR", message, details={"name": [{"code": "invalid_name", "message": message}]})
    inspected = lora_inspect(fh=fh, filename=filename, base_model=base_model)
    existing = lora_registered(sha256=inspected.sha256, owner=owner)
    if existing:
        return existing, False
    if name:
        if _name_taken(name, owner=owner):
            raise Conflict("LORA_NAME_TAKEN", f"A different LoRA is already named {name!r}.", details={"name": name})
    else:
        base = default_name or lora_name_from(inspected.info.output_name or Path(filename).stem)
        name = lora_free_name(base, sha256=inspected.sha256, owner=owner)
    lora = lora_build(
        inspected,
        name=name,
        owner=owner,
        relative_path=relative_path,
        trigger_word=trigger_word,
        default_multiplier=default_multiplier,
        base_model=base_model,
        visibility=visibility,
    )
    return lora_store(lora, fh=fh, filename=filename, owner=owner)


@dataclass(frozen=True)
class Inspected:
    """A file read and checked against the model: its size, header facts and sha256."""

    size: int
    info: LoraInfo
    sha256: str


def lora_inspect(*, fh: BinaryIO, filename: str, base_model: str = DEFAULT_MODEL) -> Inspected:
    """Read a file's header and check that it fits `base_model` (LORA_TOO_LARGE, the header's codes)."""
    size = _file_size(fh)
    if size > settings.LORA_MAX_UPLOAD_BYTES:
        raise ApiError("LORA_TOO_LARGE", f"LoRA files may be at most {settings.LORA_MAX_UPLOAD_BYTES} bytes.")
    try:
        info = inspect_lora_file(fh, size)
        check_compatible(info, shape=model_shape(base_model), model_id=base_model)
    except LoraFileError as exc:
        raise ApiError(exc.code, exc.message, details={"file": filename}) from None
    return Inspected(size=size, info=info, sha256=_sha256(fh))


def lora_build(
    inspected: Inspected,
    *,
    name: str,
    owner,
    relative_path: str | None,
    trigger_word: str,
    default_multiplier: float,
    base_model: str,
    visibility: str,
    **fields,
) -> Lora:
    """The unsaved row of an inspected file; `fields` (training_run, version, ...) as given. An empty trigger
    word takes the header's most frequent tag."""
    info = inspected.info
    return Lora(
        name=name,
        owner=owner,
        relative_path=relative_path or None,
        sha256=inspected.sha256,
        size=inspected.size,
        base_model=base_model,
        trigger_word=trigger_word or (info.trigger_words[0] if info.trigger_words else ""),
        default_multiplier=default_multiplier,
        visibility=visibility,
        key_format=info.key_format,
        rank=info.rank,
        hidden_size=info.hidden_size,
        num_blocks=info.num_blocks,
        target_modules=[str(module)[:TEXT_CHARS] for module in info.target_modules[:LIST_ITEMS]],
        software_version=info.software_version or "",
        info=info_bounded(info.as_dict()),
        **{"training_step": info.training_step, **fields},
    )


class SupersededMeanwhile(Exception):
    """The version a new file was to replace was replaced by another request first."""


def lora_store(lora: Lora, *, fh: BinaryIO, filename: str, owner, supersedes: Lora | None = None) -> tuple[Lora, bool]:
    """Save the file and the row together; with `supersedes`, mark that current version superseded in the
    same transaction (SupersededMeanwhile if it no longer is current). The same bytes stored meanwhile by a
    concurrent request answer that LoRA (False: not created now)."""
    try:
        with transaction.atomic():
            if supersedes is not None:
                if not Lora.objects.filter(pk=supersedes.pk, superseded=False).update(superseded=True):
                    raise SupersededMeanwhile
            lora.file.save(Path(filename).name, File(fh), save=False)
            lora.save()
    except BaseException as exc:
        lora.file.delete(save=False)  # never leave an orphan file behind
        raced = None if isinstance(exc, SupersededMeanwhile) else lora_registered(sha256=lora.sha256, owner=owner)
        if raced:  # the same file registered by a concurrent request
            return raced, False
        raise
    return lora, True


def lora_root_file(relative_path: str) -> Path | None:
    """The file under LORA_ROOT at a canonical relative path (`lora_path_normalize`), never escaping the root."""
    root = settings.LORA_ROOT.resolve()
    if not relative_path or "\x00" in relative_path or Path(relative_path).is_absolute():
        return None
    candidate = (root / relative_path).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file() or candidate.suffix != LORA_SUFFIX:
        return None
    return candidate


def lora_resolve(*, ref: str, owner=None, fetch: bool = True) -> Lora | None:
    """The LoRA a request's reference names (see `lora_ref_kind`): registered and visible to `owner`,
    or a file under LORA_ROOT registered now, or a URL downloaded and registered now. With
    `fetch=False` an unregistered URL is only checked (what can be checked without the network) and
    None comes back: the CPU queue fetches it later."""
    if len(ref) > PATH_MAX:
        raise ApiError("LORA_PATH_TOO_LONG", f"LoRA paths may be at most {PATH_MAX} characters.")
    lora = lora_find(ref=ref, user=owner)
    if lora:
        return lora
    kind = lora_ref_kind(ref)
    if kind == "url":
        if not fetch:
            lora_url_check(url=ref)
            return None
        fh, filename = lora_download(url=ref)
        with fh:
            return lora_register(fh=fh, filename=filename, owner=owner, default_name=ref)
    relative = lora_path_normalize(ref) if kind == "path" else None
    path = lora_root_file(relative) if relative and len(relative) <= PATH_MAX else None
    if path is None:
        raise NotFound(
            "LORA_NOT_FOUND", f"No LoRA is registered or found under the LoRA root as {ref!r}.", details={"path": ref}
        )
    return _register_root_file(path, relative=relative, owner=owner)


def _register_root_file(path: Path, *, relative: str, owner) -> Lora:
    """A file of an ai-toolkit output folder, registered under its canonical job/file.safetensors path."""
    with path.open("rb") as fh:
        return lora_register(
            fh=fh, filename=path.name, owner=owner, relative_path=relative, default_name=lora_root_name(relative)
        )


def lora_delete(*, lora: Lora, actor=None) -> None:
    """Delete a LoRA and its file; deleting the current version makes the one it superseded current again."""
    require_manage(actor, lora, what="LoRA")
    earlier = None if lora.superseded else lora_versions(lora=lora, user=None).filter(superseded=True).first()
    lora.file.delete(save=False)
    with transaction.atomic():
        lora.delete()
        if earlier is not None:
            Lora.objects.filter(pk=earlier.pk).update(superseded=False)
