"""Reads of LoRAs: what a user may see, and lookups by the `path` of a request."""
from __future__ import annotations

from django.db.models import Q, QuerySet

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
