"""Reads of LoRAs: lookups by the `path` of a request."""
from __future__ import annotations

from django.db.models import Q, QuerySet

from .models import Lora


def lora_list() -> QuerySet[Lora]:
    return Lora.objects.select_related("owner")


def lora_find(*, ref: str) -> Lora | None:
    """A registered LoRA by relative path, name, id or sha256."""
    query = Q(relative_path=ref) | Q(name=ref) | Q(sha256=ref)
    if ref.isdigit():
        query |= Q(pk=int(ref))
    return Lora.objects.filter(query).first()
