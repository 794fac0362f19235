"""Reads of LoRAs: what a user may see, and what a request's reference (`path`) names.

A reference resolves in exactly one namespace, chosen by its spelling (`lora_ref_kind`): ASCII digits
are an id, 64 hex digits a sha256, "://" a URL, a "/", a backslash or a ".safetensors" ending a path
under LORA_ROOT (normalised by `lora_path_normalize`, matched only against files registered from the
root), anything else an uploaded name. Lookups see only the LoRAs the requester may see; where more
than one matches (the same bytes registered privately by one user and for the team by another), the
requester's own comes first, then the team's, then the oldest. A name or a path names the current
version of a LoRA; an id or a sha256 names exactly that file, an earlier (superseded) version included.
"""

from __future__ import annotations

import posixpath
import re

from django.contrib.auth import get_user_model
from django.db.models import Case, Count, F, IntegerField, Q, QuerySet, Value, When
from django.shortcuts import get_object_or_404

from .models import Lora, Visibility

LORA_SUFFIX = ".safetensors"
ID_MAX = 2**63 - 1  # a bigger number names no row (and would overflow the database's integer)


def lora_ref_kind(ref: str) -> str:
    """The namespace a reference resolves in: "id", "sha256", "url", "path" or "name"."""
    if re.fullmatch(r"[0-9]+", ref):
        return "id"
    if re.fullmatch(r"[0-9a-fA-F]{64}", ref):
        return "sha256"
    if "://" in ref:
        return "url"
    if "/" in ref or "\\" in ref or ref.lower().endswith(LORA_SUFFIX):
        return "path"
    return "name"


def lora_path_normalize(ref: str) -> str | None:
    """The one relative path under LORA_ROOT that a path reference spells: backslashes as slashes,
    "." and empty segments dropped, ".." applied, ".safetensors" added when left out. None for a
    spelling that is absolute, holds a NUL or leaves the root (even if it would come back in)."""
    path = ref.replace("\\", "/")
    if "\x00" in path or path.startswith("/"):
        return None
    path = posixpath.normpath(path)
    if path in (".", "..") or path.startswith("../"):
        return None
    return path if path.endswith(LORA_SUFFIX) else path + LORA_SUFFIX


def lora_list(*, user=None) -> QuerySet[Lora]:
    """LoRAs `user` may see and use: the team's, their own private ones, everything for staff."""
    loras = Lora.objects.select_related("owner")
    if user is None or user.is_staff:
        return loras
    return loras.filter(Q(visibility=Visibility.TEAM) | Q(owner_id=user.pk))


def lora_current(*, user=None) -> QuerySet[Lora]:
    """The current versions of the LoRAs `user` may see: what a picker offers (an earlier version is
    reached by its id or sha256)."""
    return lora_list(user=user).filter(superseded=False)


def lora_visible(*, lora: Lora, user) -> bool:
    """Whether `user` may see `lora` (the row-level form of `lora_list`)."""
    return user is None or user.is_staff or lora.visibility == Visibility.TEAM or lora.owner_id == user.pk


def lora_preferred(loras: QuerySet[Lora], *, user) -> QuerySet[Lora]:
    """`loras` in the order a lookup picks them: `user`'s own, then the team's, then the oldest."""
    whens = [When(owner_id=user.pk, then=Value(0))] if user is not None else []
    whens.append(When(visibility=Visibility.TEAM, then=Value(1)))
    return loras.annotate(preference=Case(*whens, default=Value(2), output_field=IntegerField())).order_by(
        "preference", "pk"
    )


def lora_find(*, ref: str, user=None) -> Lora | None:
    """The LoRA visible to `user` that `ref` names, in the one namespace its spelling picks (see the
    module's docstring); None when there is none (an unregistered path or URL is the caller's to fetch)."""
    kind = lora_ref_kind(ref)
    if kind == "id":
        if int(ref) > ID_MAX:
            return None
        lookup = Q(pk=int(ref))
    elif kind == "sha256":
        lookup = Q(sha256=ref.lower())
    elif kind == "path":
        relative = lora_path_normalize(ref)
        if relative is None:
            return None
        lookup = Q(relative_path=relative)
    else:  # a URL is registered under its own text as name; uploaded names never contain "/"
        lookup = Q(name=ref)
    if kind in ("path", "name", "url"):
        lookup &= Q(superseded=False)
    return lora_preferred(lora_list(user=user).filter(lookup), user=user).first()


def lora_library(
    *, user, q: str = "", owner: str = "", run: str = "", superseded: bool | None = False
) -> QuerySet[Lora]:
    """The library page's rows: what `user` may see, searched by name, trigger word, file path or run
    (`q`), by owner username and by training run, each with the number of jobs that used it. Current
    versions by default; `superseded=True` the earlier ones, None both."""
    loras = lora_list(user=user).annotate(job_count=Count("job_uses__job", distinct=True)).order_by("-created_at")
    if superseded is not None:
        loras = loras.filter(superseded=superseded)
    if run:
        loras = loras.filter(training_run=run)
    if q:
        loras = loras.filter(
            Q(name__icontains=q)
            | Q(trigger_word__icontains=q)
            | Q(relative_path__icontains=q)
            | Q(training_run__icontains=q)
            | Q(sha256__istartswith=q)
        )
    if owner:
        loras = loras.filter(owner__username=owner)
    return loras


def lora_owners(*, user) -> QuerySet:
    """Usernames owning a LoRA that `user` may see, for the library's owner filter."""
    return (
        get_user_model()
        .objects.filter(loras__in=lora_list(user=user))
        .distinct()
        .order_by("username")
        .values_list("username", flat=True)
    )


def lora_get(*, pk: int, user) -> Lora:
    """One LoRA `user` may see, any version, with its job count; 404 otherwise (another's private LoRA included)."""
    return get_object_or_404(lora_library(user=user, superseded=None), pk=pk)


def lora_run(*, run: str, user) -> QuerySet[Lora]:
    """The current checkpoints of training run `run` that `user` may see, by step (at an equal step the
    final `<run>` after `<run>_<step>`)."""
    return lora_current(user=user).filter(training_run=run).order_by(F("training_step").asc(nulls_last=True), "-name")


def lora_versions(*, lora: Lora, user) -> QuerySet[Lora]:
    """Every version of `lora` that `user` may see, newest first: the rows holding its name where its name is
    unique (the team's LoRAs, or its owner's private ones), the current one and those it superseded."""
    if lora.visibility == Visibility.TEAM:
        scope = Q(visibility=Visibility.TEAM)
    else:
        scope = Q(visibility=Visibility.PRIVATE, owner_id=lora.owner_id)
    return lora_list(user=user).filter(scope, name=lora.name).order_by("-version", "-created_at")
