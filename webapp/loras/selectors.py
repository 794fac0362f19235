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
    """A LoRA visible to `user` by relative path, name, id or sha256."""
    query = Q(relative_path=ref) | Q(name=ref) | Q(sha256=ref)
    if ref.isdigit():
        query |= Q(pk=int(ref))
    return lora_list(user=user).filter(query).first()
