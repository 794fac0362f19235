"""Every write of a prompt set: create, update (items replaced whole, in order, at most JOB_MAX_PROMPTS), delete,
and import from an ai-toolkit training config."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from webapp.core.errors import ApiError, Conflict
from webapp.core.permissions import require_manage

from .ai_toolkit import TrainingConfig
from .models import PromptItem, PromptSet

IMPORTED_NAME = "ai-toolkit samples"  # a config with no run name
IMPORTED_NAME_ATTEMPTS = 100  # "<name>", "<name> (2)" ... "<name> (100)"


def _write_items(prompt_set: PromptSet, items: list[dict]) -> None:
    if len(items) > settings.JOB_MAX_PROMPTS:  # a job renders the whole set: the job's limit
        message = f"A prompt set may have at most {settings.JOB_MAX_PROMPTS} prompts; this one has {len(items)}."
        raise ApiError("TOO_MANY_PROMPTS", message, details={"items": [{"code": "max_length", "message": message}]})
    PromptItem.objects.bulk_create(
        PromptItem(
            prompt_set=prompt_set, position=i, **{k: v for k, v in item.items() if k != "sampler" and v is not None}
        )
        for i, item in enumerate(items)
    )


@transaction.atomic
def prompt_set_create(*, owner, name: str, items: list[dict], trigger_word: str = "") -> PromptSet:
    prompt_set = PromptSet.objects.create(owner=owner, name=name, trigger_word=trigger_word)
    _write_items(prompt_set, items)
    return prompt_set


@transaction.atomic
def prompt_set_update(*, prompt_set: PromptSet, actor, items: list[dict] | None = None, **fields) -> PromptSet:
    """Change the named fields; `items`, when given, replace the set's items."""
    require_manage(actor, prompt_set, what="prompt set")
    for name, value in fields.items():
        setattr(prompt_set, name, value)
    prompt_set.save()
    if items is not None:
        prompt_set.items.all().delete()
        _write_items(prompt_set, items)
    return prompt_set


def prompt_set_delete(*, prompt_set: PromptSet, actor) -> None:
    require_manage(actor, prompt_set, what="prompt set")
    prompt_set.delete()


@transaction.atomic
def prompt_set_import(*, owner, config: TrainingConfig, name: str | None = None) -> PromptSet:
    """The owner's set `name` (else the run's name) holding the config's sample prompts. A set of that name
    that an earlier import of the same config made (its notes begin with this import's first line) gets its
    items, trigger word and notes replaced, so importing a run again after more training keeps one set; a
    set the owner wrote is never overwritten: the import takes the first free name of "<name> (2)", "(3)"..."""
    base = name or config.name or IMPORTED_NAME
    max_length = PromptSet._meta.get_field("name").max_length
    origin = f"the ai-toolkit config of run {config.name}" if config.name else "an ai-toolkit config"
    first_line = f"Imported from {origin}."
    notes = "\n".join([first_line, *config.notes])
    for n in range(1, IMPORTED_NAME_ATTEMPTS + 1):
        suffix = f" ({n})" if n > 1 else ""
        set_name = base[: max_length - len(suffix)] + suffix
        same_name = PromptSet.objects.select_for_update().filter(owner=owner, name=set_name).order_by("pk")
        if not same_name.exists():
            prompt_set = PromptSet.objects.create(
                owner=owner, name=set_name, trigger_word=config.trigger_word, notes=notes
            )
            break
        prompt_set = next((s for s in same_name if s.notes.split("\n", 1)[0] == first_line), None)
        if prompt_set is not None:
            prompt_set.trigger_word, prompt_set.notes = config.trigger_word, notes
            prompt_set.save()
            prompt_set.items.all().delete()
            break
    else:
        raise Conflict(
            "PROMPT_SET_NAME_TAKEN",
            f"The prompt sets {base!r} to {base!r} ({IMPORTED_NAME_ATTEMPTS}) exist already; give the import a name.",
            details={"name": base},
        )
    _write_items(prompt_set, config.items)
    return prompt_set
