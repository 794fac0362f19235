"""Reads of LoRAs: what a user may see, and lookups by the `path` of a request."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404

from .models import Lora, Visibility


def lora_list(*, user=None) -> QuerySet[Lora]:
    """LoRAs `user` may see and use: the team's, their own private ones, everything for staff."""
    loras = Lora.objects.select_related("owner")
    if user is None or user.is_staff:
        return loras
    return loras.filter(Q(visibility=Visibility.TEAM) | Q(owner_id=user.pk))


def lora_find(*, ref: str, user=None) -> Lora | None:
    """A LoRA visible to `user` by id, sha256, relative path or name, in that order (uploaded names
    can never look like the others, so no upload can shadow another LoRA's reference)."""
    visible = lora_list(user=user)
    lookups = [Q(pk=int(ref))] if ref.isdigit() else []
    lookups += [Q(sha256=ref), Q(relative_path=ref), Q(name=ref)]
    for lookup in lookups:
        lora = visible.filter(lookup).first()
        if lora:
            return lora
    return None


def lora_library(*, user, q: str = "", owner: str = "") -> QuerySet[Lora]:
    """The library page's rows: what `user` may see, searched by name, trigger word or file path
    (`q`) and by owner username, each with the number of jobs that used it."""
    loras = lora_list(user=user).annotate(job_count=Count("job_uses__job", distinct=True)).order_by("-created_at")
    if q:
        loras = loras.filter(
            Q(name__icontains=q)
            | Q(trigger_word__icontains=q)
            | Q(relative_path__icontains=q)
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
    """One LoRA `user` may see, with its job count; 404 otherwise (another's private LoRA included)."""
    return get_object_or_404(lora_library(user=user), pk=pk)
