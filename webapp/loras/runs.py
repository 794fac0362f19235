"""Training runs: an ai-toolkit output folder imported whole, its checkpoints one family of LoRAs with versions.

A run folder holds `config.yaml`, checkpoints `<name>_<step:09d>.safetensors` and the final
`<name>.safetensors`. Every checkpoint becomes a LoRA of run `<name>` (`training_run`) at its step; the
config gives the run's trigger word, its sample section a prompt set named after the run, and the
previews' `network_multiplier` the LoRAs' default multiplier. Importing a run again adds what is new:
the same bytes are left as they are, and new bytes under a name (or a LORA_ROOT path) the run already
holds become that LoRA's next version. The earlier version stays, `superseded`: its id and sha256 still
name it (jobs that used it keep it), while the name and the path now name the new one.
"""

from __future__ import annotations

import io
import lzma
import re
import stat
import tempfile
import zipfile
import zlib
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from django.conf import settings
from django.db import IntegrityError
from django.db.models import Case, IntegerField, Q, Value, When

from webapp.core.catalog import DEFAULT_MODEL, MULTIPLIER_HIGH, MULTIPLIER_LOW
from webapp.core.errors import ApiError, Conflict
from webapp.core.permissions import can_manage
from webapp.prompts.ai_toolkit import TRAINING_CONFIG_MAX_BYTES, TrainingConfig, training_config_read
from webapp.prompts.models import PromptSet
from webapp.prompts.services import prompt_set_import
from workers.pipeline.lora_files import LoraInfo

from .models import Lora, Visibility
from .selectors import LORA_SUFFIX, lora_list, lora_path_normalize, lora_run
from .services import (
    NAME_MAX,
    SupersededMeanwhile,
    lora_build,
    lora_free_name,
    lora_inspect,
    lora_name_from,
    lora_registered,
    lora_root_name,
    lora_store,
)

CONFIG_FILE = "config.yaml"
CHECKPOINT = re.compile(r"(?P<run>.+)_(?P<step>[0-9]{9})")  # ai-toolkit pads a checkpoint's step to 9 digits
STEP_MAX = 2**31 - 1  # Lora.training_step
VERSION_ATTEMPTS = 5  # concurrent imports of one run each store one version, then look again
ARCHIVE_MAX_ENTRIES = 10_000  # a run folder with its samples holds hundreds
ARCHIVE_MAX_RATIO = 100  # a LoRA's weights compress about 1.1x; a zip bomb's about 1000x
ARCHIVE_RATIO_FROM_BYTES = 2**20  # smaller entries do no harm whatever their ratio


@dataclass
class RunImport:
    """What one import of a run came to: LoRAs added (new files), updated (new versions of a file the run
    already had), unchanged (bytes already registered), and the files refused as (file, code, message)."""

    run: str
    trigger_word: str = ""
    prompt_set: PromptSet | None = None
    added: list[Lora] = field(default_factory=list)
    updated: list[Lora] = field(default_factory=list)
    unchanged: list[Lora] = field(default_factory=list)
    refused: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return (
            f"{len(self.added)} added, {len(self.updated)} updated, {len(self.unchanged)} unchanged, "
            f"{len(self.refused)} refused"
        )


@dataclass(frozen=True)
class _RunDefaults:
    """What a new LoRA of the run gets, where given (else its earlier version's, else the header's and 1.0)."""

    trigger_word: str
    multiplier: float | None
    notes: list[str]


def run_name_check(name: str) -> str:
    """A run's name as given (the `run` field, config.name): printable, no path separator, at most NAME_MAX."""
    name = name.strip()
    if not name or len(name) > NAME_MAX or not name.isprintable() or "/" in name or "\\" in name:
        raise ApiError(
            "INVALID_RUN_NAME",
            f"A run name is 1 to {NAME_MAX} printable characters without / or \\.",
            details={"run": name[:NAME_MAX]},
        )
    return name


def run_name_from_files(filenames: list[str]) -> str | None:
    """The run that ai-toolkit file names agree on (`<name>.safetensors`, `<name>_000000250.safetensors`), or None."""
    names = set()
    for filename in filenames:
        stem = PurePosixPath(filename).name.removesuffix(LORA_SUFFIX)
        checkpoint = CHECKPOINT.fullmatch(stem)
        names.add(checkpoint["run"] if checkpoint else stem)
    return names.pop() if len(names) == 1 else None


def checkpoint_step(filename: str, *, run: str, info: LoraInfo) -> int | None:
    """The step a checkpoint was saved at: from its name `<run>_<digits>` (or ai-toolkit's 9-digit suffix),
    else the header's (training_info, else kohya's ss_steps), as for the final `<run>.safetensors`."""
    stem = PurePosixPath(filename).name.removesuffix(LORA_SUFFIX)
    named = re.fullmatch(re.escape(run) + r"_([0-9]{1,10})", stem) or CHECKPOINT.fullmatch(stem)
    if named and int(named[named.lastindex]) <= STEP_MAX:
        return int(named[named.lastindex])
    if info.training_step is not None:
        return info.training_step
    steps = str(info.metadata.get("ss_steps", "")).strip()
    return int(steps) if steps.isdigit() and len(steps) <= 10 and int(steps) <= STEP_MAX else None


def training_config_from(config: bytes | None) -> TrainingConfig | None:
    """A run's config.yaml read (INVALID_TRAINING_CONFIG, TOO_MANY_PROMPTS), or None without one."""
    return None if config is None else training_config_read(config)


def lora_run_import(
    *,
    files: list[tuple[str, BinaryIO]],
    config: bytes | None,
    owner,
    run: str | None = None,
    folder: str | None = None,
) -> RunImport:
    """Register uploaded checkpoints of one training run. The run is named by `run`, else the config's
    name, else what the file names agree on, else `folder` (the name of the folder they came in);
    RUN_NAME_UNKNOWN otherwise. A config that cannot be read refuses the whole import; a file that
    cannot be registered is refused alone (in `refused`)."""
    training = training_config_from(config)
    filenames = [filename for filename, _ in files]
    name = _run_name(run=run, training=training, filenames=filenames, folder=folder)
    run_name_free(name, owner=owner)
    return _run_import(files=files, training=training, owner=owner, run=name)


def run_name_free(run: str, *, owner) -> None:
    """Refuse (RUN_NAME_TAKEN) a run whose name a LoRA of another owner that `owner` can see already has: the
    run would otherwise mix both owners' checkpoints. The import command (owner None) acts for the server."""
    if owner is None:
        return
    if lora_list(user=owner).filter(training_run=run).exclude(owner_id=owner.pk).exists():
        raise Conflict(
            "RUN_NAME_TAKEN",
            f"Another user's LoRAs already form the run {run!r}; import this one under another name (run).",
            details={"run": run},
        )


def _run_name(*, run: str | None, training: TrainingConfig | None, filenames: list[str], folder: str | None) -> str:
    name = run or (training.name if training else "") or run_name_from_files(filenames) or folder
    if not name:
        raise ApiError(
            "RUN_NAME_UNKNOWN",
            "The file names do not name one run: give the run's name (run) or its config.yaml.",
            details={"files": [PurePosixPath(filename).name for filename in filenames][:50]},
        )
    return run_name_check(name)


def _run_import(
    *,
    files: list[tuple[str, BinaryIO]],
    training: TrainingConfig | None,
    owner,
    run: str,
    relative_dir: str | None = None,
) -> RunImport:
    """Import `files` as checkpoints of `run`; with `relative_dir` they are files of that folder under
    LORA_ROOT, registered by their path there (and a new file at a path already registered is its next version)."""
    defaults = _run_defaults(run=run, owner=owner, training=training)
    result = RunImport(run=run, trigger_word=defaults.trigger_word, notes=list(defaults.notes))
    seen = set()
    for filename, fh in files:
        basename = PurePosixPath(filename.replace("\\", "/")).name
        shown = f"{relative_dir}/{basename}" if relative_dir else basename
        try:
            if not basename.lower().endswith(LORA_SUFFIX):
                raise ApiError("LORA_NOT_SAFETENSORS", "Only .safetensors files are checkpoints of a run.")
            if basename in seen:
                raise ApiError("DUPLICATE_FILE", "A file of this name is already part of this import.")
            seen.add(basename)
            relative = None
            if relative_dir is not None:
                relative = lora_path_normalize(f"{relative_dir}/{basename}" if relative_dir else basename)
            outcome, lora = _import_file(
                fh, filename=basename, run=run, owner=owner, relative=relative, defaults=defaults
            )
        except ApiError as exc:
            result.refused.append((shown, exc.code, exc.message))
        else:
            getattr(result, outcome).append(lora)
    imported = [*result.added, *result.updated, *result.unchanged]
    if not result.trigger_word and imported:
        result.trigger_word = imported[0].trigger_word
    if training is not None and imported:
        result.prompt_set = prompt_set_import(owner=owner, config=training, name=run)
    return result


def _run_defaults(*, run: str, owner, training: TrainingConfig | None) -> _RunDefaults:
    """The run's trigger word and multiplier: the config's (its previews ran at network_multiplier, 1.0 when
    left out), else those of the run's newest LoRA (a client adding one checkpoint per request sends the
    config once)."""
    latest = lora_run(run=run, user=owner).order_by("-created_at").first()
    if training is None:
        return _RunDefaults(
            trigger_word=latest.trigger_word if latest else "",
            multiplier=latest.default_multiplier if latest else None,
            notes=[],
        )
    multiplier, notes = training.network_multiplier, []
    if multiplier is None:
        multiplier = 1.0
    elif not MULTIPLIER_LOW <= multiplier <= MULTIPLIER_HIGH:
        notes.append(
            f"The previews' network_multiplier {multiplier:g} is outside {MULTIPLIER_LOW:g}..{MULTIPLIER_HIGH:g}; "
            "the LoRAs keep 1.0."
        )
        multiplier = 1.0
    return _RunDefaults(
        trigger_word=training.trigger_word or (latest.trigger_word if latest else ""),
        multiplier=multiplier,
        notes=notes,
    )


def _import_file(
    fh: BinaryIO, *, filename: str, run: str, owner, relative: str | None, defaults: _RunDefaults
) -> tuple[str, Lora]:
    """("added" | "updated" | "unchanged", the LoRA) for one checkpoint of `run`."""
    inspected = lora_inspect(fh=fh, filename=filename)
    step = checkpoint_step(filename, run=run, info=inspected.info)
    name = lora_root_name(relative) if relative else lora_name_from(PurePosixPath(filename).stem)
    for _ in range(VERSION_ATTEMPTS):
        existing = lora_registered(sha256=inspected.sha256, owner=owner)
        if existing:
            return "unchanged", _adopted(existing, run=run, step=step, owner=owner)
        holder = _current_holder(run=run, owner=owner, relative=relative, name=name)
        lora = lora_build(
            inspected,
            name=holder.name if holder else lora_free_name(name, sha256=inspected.sha256, owner=owner),
            owner=holder.owner if holder else owner,
            relative_path=relative or (holder.relative_path if holder else None),
            trigger_word=defaults.trigger_word or (holder.trigger_word if holder else ""),
            default_multiplier=_multiplier(defaults, holder),
            base_model=holder.base_model if holder else DEFAULT_MODEL,
            visibility=holder.visibility if holder else Visibility.TEAM,
            training_run=run,
            training_step=step,
            version=holder.version + 1 if holder else 1,
        )
        try:
            stored, created = lora_store(lora, fh=fh, filename=filename, owner=owner, supersedes=holder)
        except SupersededMeanwhile:
            continue  # another import replaced it first: compare with the version it stored
        except IntegrityError:
            raise Conflict("LORA_NAME_TAKEN", f"Another LoRA took the name {lora.name!r} meanwhile.") from None
        if not created:
            return "unchanged", stored
        return ("updated" if holder else "added"), stored
    raise Conflict("LORA_BUSY", "Other imports keep replacing this file; try again.")


def _multiplier(defaults: _RunDefaults, holder: Lora | None) -> float:
    if defaults.multiplier is not None:
        return defaults.multiplier
    return holder.default_multiplier if holder else 1.0


def _current_holder(*, run: str, owner, relative: str | None, name: str) -> Lora | None:
    """The current LoRA a new file of the run replaces: the one registered at its path under LORA_ROOT (the
    folder's file changed), else the run's LoRA of its name when `owner` may manage it. Only rows the new
    one would clash with count (the team's, the owner's own), as the uniqueness constraints scope them. Within
    the run a name also matches its suffixed form, the exact name first."""
    clash = Q(visibility=Visibility.TEAM)
    if owner is not None:
        clash |= Q(owner_id=owner.pk)
    current = Lora.objects.select_related("owner").filter(clash, superseded=False)
    if relative:
        return current.filter(relative_path=relative).order_by("pk").first()
    # a file whose name was taken at its first import holds `<name>-<sha256 prefix>(-n)` (lora_free_name)
    suffixed = Q(name__regex=f"^{re.escape(name)}(-[0-9a-f]{{12}}(-[0-9]+)?)?$")
    holder = (
        current.filter(suffixed, training_run=run)
        .annotate(exact=Case(When(name=name, then=Value(0)), default=Value(1), output_field=IntegerField()))
        .order_by("exact", "pk")
        .first()
    )
    return holder if holder is not None and can_manage(owner, holder) else None


def _adopted(lora: Lora, *, run: str, step: int | None, owner) -> Lora:
    """A LoRA registered before, now found in run `run`: it joins the run when it belonged to none and
    `owner` may manage it (None: the import command, acting for the server)."""
    if not lora.training_run and (owner is None or can_manage(owner, lora)):
        lora.training_run = run
        lora.training_step = step if step is not None else lora.training_step
        Lora.objects.filter(pk=lora.pk).update(training_run=lora.training_run, training_step=lora.training_step)
    return lora


# --- a run folder on disk (the import_loras command) ------------------------------------------------


@dataclass(frozen=True)
class _RunFolder:
    path: Path
    relative: str  # the folder's path under the base (LORA_ROOT where it lies there); "" for the base itself
    config: Path | None


def _run_folders(directory: Path) -> list[_RunFolder]:
    """Every folder under `directory` (itself included) holding *.safetensors. Paths are relative to LORA_ROOT
    where `directory` lies under it; else `directory` is a folder of runs (job/file.safetensors), or one
    run folder, named with its own folder name (job/file.safetensors again)."""
    directory = Path(directory)
    folders = sorted({path.parent for path in directory.rglob("*" + LORA_SUFFIX) if path.is_file()})
    resolved, root = directory.resolve(), settings.LORA_ROOT.resolve()
    if resolved.is_relative_to(root):
        prefix = "" if resolved == root else resolved.relative_to(root).as_posix()
    elif folders == [directory]:
        prefix = resolved.name
    else:
        prefix = ""
    runs = []
    for folder in folders:
        inner = folder.relative_to(directory).as_posix()
        relative = "/".join(part for part in (prefix, "" if inner == "." else inner) if part)
        config = folder / CONFIG_FILE
        runs.append(_RunFolder(path=folder, relative=relative, config=config if config.is_file() else None))
    return runs


def lora_run_import_dir(*, directory: Path, owner=None) -> list[RunImport]:
    """Import every run folder under `directory` (one run folder, or a folder of them): a folder with a
    config.yaml is one run, named by it; a folder without one holds a run per name its files agree on.
    Files keep their job/file.safetensors path, as requests name them under LORA_ROOT."""
    results = []
    for folder in _run_folders(directory):
        checkpoints = sorted(path for path in folder.path.glob("*" + LORA_SUFFIX) if path.is_file())
        training, notes = None, []
        if folder.config is not None:
            try:
                with folder.config.open("rb") as fh:
                    training = training_config_read(fh.read(TRAINING_CONFIG_MAX_BYTES + 1))
            except ApiError as exc:
                notes.append(f"{CONFIG_FILE} not used: {exc.code}: {exc.message}")
            except OSError as exc:
                notes.append(f"{CONFIG_FILE} not used: it cannot be read ({exc.strerror or exc}).")
        groups: dict[str | None, list[Path]] = defaultdict(list)
        if training is not None:
            groups[None] = checkpoints
        else:
            for path in checkpoints:
                groups[run_name_from_files([path.name])].append(path)
        for group_name, paths in groups.items():
            result = _import_folder_group(folder, paths, training=training, run=group_name, owner=owner)
            result.notes[:0] = notes
            results.append(result)
    return results


def _import_folder_group(
    folder: _RunFolder, paths: list[Path], *, training: TrainingConfig | None, run: str | None, owner
) -> RunImport:
    try:
        name = _run_name(
            run=run, training=training, filenames=[path.name for path in paths], folder=folder.path.resolve().name
        )
        run_name_free(name, owner=owner)
    except ApiError as exc:
        shown = [f"{folder.relative}/{path.name}" if folder.relative else path.name for path in paths]
        return RunImport(run=run or folder.path.name, refused=[(file, exc.code, exc.message) for file in shown])
    with ExitStack() as stack:
        files = [(path.name, stack.enter_context(path.open("rb"))) for path in paths]
        return _run_import(files=files, training=training, owner=owner, run=name, relative_dir=folder.relative)


# --- a run folder uploaded as one zip ---------------------------------------------------------------


@dataclass
class RunArchive:
    """The run folder of an uploaded zip: its checkpoints (temporary copies, closed with the archive),
    its config.yaml and the folder's name."""

    files: list[tuple[str, BinaryIO]]
    config: bytes | None
    folder: str | None

    def close(self) -> None:
        for _, fh in self.files:
            fh.close()

    def __enter__(self) -> RunArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _archive_error(code: str, message: str, **details) -> ApiError:
    return ApiError(code, message, details=details)


def _entry_parts(name: str) -> tuple[str, ...]:
    """An entry's path as folder names and a file name; ARCHIVE_UNSAFE_PATH for one that is absolute or
    climbs out of the archive (nothing is ever extracted to disk, but such a zip is made to attack)."""
    path = name.replace("\\", "/")
    parts = tuple(part for part in path.split("/") if part not in ("", "."))
    if path.startswith("/") or "\x00" in path or ".." in parts or re.match(r"[A-Za-z]:", path):
        raise _archive_error(
            "ARCHIVE_UNSAFE_PATH", f"The archive holds an entry with an unsafe path: {name[:200]!r}.", entry=name[:200]
        )
    return parts


def _copy_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, sink: BinaryIO) -> None:
    """Decompress one entry into `sink`, never past the size its header declares."""
    written = 0
    with archive.open(entry) as source:
        while chunk := source.read(1 << 20):
            written += len(chunk)
            if written > entry.file_size:
                raise _archive_error(
                    "ARCHIVE_TOO_LARGE",
                    f"{entry.filename[:200]!r} holds more than its header says.",
                    entry=entry.filename,
                )
            sink.write(chunk)
    sink.seek(0)


def run_archive_read(*, fh: BinaryIO) -> RunArchive:
    """The run folder in a zip: the *.safetensors of the one folder that has them and its config.yaml; every
    other entry is left unread. Refused whole (ARCHIVE_*) when it is no zip, has an entry with an unsafe path,
    is encrypted, declares more than LORA_MAX_UPLOAD_BYTES for a file used or RUN_ARCHIVE_MAX_BYTES for all of
    them, or compresses like a zip bomb."""
    try:
        archive = zipfile.ZipFile(fh)
        entries = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise _archive_error("ARCHIVE_INVALID", "The archive is not a readable zip file.") from None
    if len(entries) > ARCHIVE_MAX_ENTRIES:
        raise _archive_error("ARCHIVE_TOO_LARGE", f"The archive holds more than {ARCHIVE_MAX_ENTRIES} entries.")
    found: dict[tuple[str, ...], zipfile.ZipInfo] = {}
    for entry in entries:
        parts = _entry_parts(entry.filename)
        if entry.is_dir() or not parts or stat.S_ISLNK(entry.external_attr >> 16):
            continue  # a link is never followed
        if parts[-1].lower().endswith(LORA_SUFFIX) or parts[-1] == CONFIG_FILE:
            if parts in found:
                raise _archive_error("ARCHIVE_INVALID", f"The archive holds {'/'.join(parts)!r} twice.")
            found[parts] = entry
    folders = {parts[:-1] for parts in found if parts[-1].lower().endswith(LORA_SUFFIX)}
    if not folders:
        raise _archive_error("ARCHIVE_NO_CHECKPOINTS", "The archive holds no .safetensors file.")
    if len(folders) > 1:
        raise _archive_error(
            "ARCHIVE_NOT_ONE_RUN",
            "The archive holds .safetensors files in more than one folder; upload one run folder at a time.",
            folders=sorted("/".join(folder) or "." for folder in folders)[:20],
        )
    (folder,) = folders
    used = {parts: entry for parts, entry in found.items() if parts[:-1] == folder}
    _check_sizes(used)
    checkpoints = sorted(parts for parts in used if parts[-1] != CONFIG_FILE)
    if len(checkpoints) > settings.DATA_UPLOAD_MAX_NUMBER_FILES:
        raise _archive_error(
            "ARCHIVE_TOO_LARGE",
            f"The archive holds more than {settings.DATA_UPLOAD_MAX_NUMBER_FILES} checkpoints; upload it in parts.",
        )
    config_entry = used.get((*folder, CONFIG_FILE))
    run = RunArchive(files=[], config=None, folder=folder[-1] if folder else None)
    try:
        if config_entry is not None:
            sink = io.BytesIO()
            _copy_entry(archive, config_entry, sink)
            run.config = sink.getvalue()
        for parts in checkpoints:
            sink = tempfile.TemporaryFile()
            run.files.append((parts[-1], sink))
            _copy_entry(archive, used[parts], sink)
    except ApiError:
        run.close()
        raise
    except (
        zipfile.BadZipFile,
        zlib.error,
        lzma.LZMAError,
        EOFError,
        NotImplementedError,
        RuntimeError,
        ValueError,
        OSError,
    ):
        run.close()
        raise _archive_error(
            "ARCHIVE_INVALID", "The archive is damaged or uses a compression this server cannot read."
        ) from None
    return run


def _check_sizes(used: dict[tuple[str, ...], zipfile.ZipInfo]) -> None:
    """What the used entries declare: each file within LORA_MAX_UPLOAD_BYTES, all of them together within
    RUN_ARCHIVE_MAX_BYTES, nothing encrypted, and neither one entry nor all of them together compressed more
    than ARCHIVE_MAX_RATIO times (a zip bomb, or one spread over many small entries)."""
    limit = settings.LORA_MAX_UPLOAD_BYTES
    total = sum(entry.file_size for entry in used.values())
    if total > settings.RUN_ARCHIVE_MAX_BYTES:
        raise _archive_error(
            "ARCHIVE_TOO_LARGE",
            f"The archive's files come to {total} bytes; a run may be at most {settings.RUN_ARCHIVE_MAX_BYTES}.",
            max_bytes=settings.RUN_ARCHIVE_MAX_BYTES,
        )
    ratio = total / max(sum(entry.compress_size for entry in used.values()), 1)
    if total > ARCHIVE_RATIO_FROM_BYTES and ratio > ARCHIVE_MAX_RATIO:
        raise _archive_error(
            "ARCHIVE_BOMB",
            f"The archive's files would expand {ratio:.0f} times together; "
            f"no LoRA compresses more than {ARCHIVE_MAX_RATIO} times.",
        )
    for parts, entry in used.items():
        name = entry.filename[:200]
        if entry.flag_bits & 0x1:
            raise _archive_error("ARCHIVE_INVALID", f"{name!r} is encrypted.", entry=name)
        if parts[-1] == CONFIG_FILE and entry.file_size > TRAINING_CONFIG_MAX_BYTES:
            raise ApiError(
                "INVALID_TRAINING_CONFIG",
                f"The training config is larger than {TRAINING_CONFIG_MAX_BYTES // 1024} KiB.",
                details={"max_bytes": TRAINING_CONFIG_MAX_BYTES},
            )
        if entry.file_size > limit:
            raise _archive_error(
                "ARCHIVE_TOO_LARGE",
                f"{name!r} is {entry.file_size} bytes; LoRA files may be at most {limit}.",
                entry=name,
            )
        ratio = entry.file_size / max(entry.compress_size, 1)
        if entry.file_size > ARCHIVE_RATIO_FROM_BYTES and ratio > ARCHIVE_MAX_RATIO:
            raise _archive_error(
                "ARCHIVE_BOMB",
                f"{name!r} would expand {ratio:.0f} times; no LoRA compresses more than {ARCHIVE_MAX_RATIO} times.",
                entry=name,
            )
