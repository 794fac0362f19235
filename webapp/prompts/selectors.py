"""Reads of prompt sets: the team's list with item counts, one set with its items."""

from __future__ import annotations

from django.db.models import Count, QuerySet
from django.shortcuts import get_object_or_404

from .models import PromptSet


def prompt_set_list() -> QuerySet[PromptSet]:
    """Every prompt set (the team shares them), with its owner and number of items."""
    return PromptSet.objects.select_related("owner").annotate(item_count=Count("items")).order_by("name")


def prompt_set_get(*, pk: int) -> PromptSet:
    return get_object_or_404(PromptSet.objects.select_related("owner").prefetch_related("items"), pk=pk)
