"""Pages of the prompt sets (/prompt-sets/): the list with an import from an ai-toolkit config, one set (edited
by its owner or staff, read by everyone else), a new set, delete. Writes go through services; items are checked
as the API checks them."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webapp.core.errors import ApiError
from webapp.core.permissions import can_manage

from .ai_toolkit import TRAINING_CONFIG_MAX_BYTES, training_config_read
from .forms import PromptItemFormSet, PromptSetForm, PromptSetImportForm, item_rows, items_rearranged
from .models import PromptSet
from .selectors import prompt_set_get, prompt_set_list
from .services import prompt_set_create, prompt_set_delete, prompt_set_import, prompt_set_update


@login_required
@require_http_methods(["GET", "POST"])
def prompt_set_list_page(request):
    """The list; a POST imports an ai-toolkit config (the API's service), answered by the set's page or the errors."""
    form, import_error = PromptSetImportForm(), None
    if request.method == "POST":
        form = PromptSetImportForm(request.POST, request.FILES)
        if form.is_valid():
            try:
                config = training_config_read(form.cleaned_data["config"].read(TRAINING_CONFIG_MAX_BYTES + 1))
                prompt_set = prompt_set_import(owner=request.user, config=config, name=form.cleaned_data["name"])
            except ApiError as exc:
                import_error = exc
            else:
                count = len(config.items)
                messages.success(request, f"Imported {count} prompt{'s' * (count != 1)} into {prompt_set.name}.")
                return redirect("prompt-set-detail", pk=prompt_set.pk)
    status = import_error.status_code if import_error else (400 if form.is_bound else 200)
    context = {"nav": "prompt-sets", "prompt_sets": prompt_set_list(), "form": form, "import_error": import_error}
    return render(request, "prompts/list.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def prompt_set_new_page(request):
    return _editor(request, None)


@login_required
@require_http_methods(["GET", "POST"])
def prompt_set_page(request, pk: int):
    prompt_set = prompt_set_get(pk=pk)
    if not can_manage(request.user, prompt_set):
        if request.method == "POST":
            raise PermissionDenied("Only the owner of this prompt set or staff may change it.")
        return render(request, "prompts/detail.html", {"nav": "prompt-sets", "prompt_set": prompt_set})
    return _editor(request, prompt_set)


@login_required
@require_POST
def prompt_set_delete_page(request, pk: int):
    prompt_set = prompt_set_get(pk=pk)
    if not can_manage(request.user, prompt_set):
        raise PermissionDenied("Only the owner of this prompt set or staff may delete it.")
    prompt_set_delete(prompt_set=prompt_set, actor=request.user)
    messages.success(request, f"Deleted {prompt_set.name}.")
    return redirect("prompt-set-list")


def _editor(request, prompt_set: PromptSet | None):
    """GET shows the set; a POST's `action` is Save, or a move/add/remove shown again unsaved."""
    status = 200
    if request.method == "GET":
        if prompt_set is None:
            form, items = PromptSetForm(), PromptItemFormSet(initial=[{}])
        else:
            form = PromptSetForm(initial={"name": prompt_set.name, "trigger_word": prompt_set.trigger_word})
            items = PromptItemFormSet(initial=item_rows(prompt_set))
    elif request.POST.get("action", "save") != "save":
        typed = PromptItemFormSet(request.POST)
        form = PromptSetForm(
            initial={"name": request.POST.get("name", ""), "trigger_word": request.POST.get("trigger_word", "")}
        )
        items = PromptItemFormSet(initial=items_rearranged(typed.rows(), request.POST["action"]))
    else:
        form, items = PromptSetForm(request.POST), PromptItemFormSet(request.POST)
        validated = items.validated_items()
        if form.is_valid() and validated is not None:
            if prompt_set is None:
                prompt_set = prompt_set_create(owner=request.user, items=validated, **form.cleaned_data)
            else:
                prompt_set_update(prompt_set=prompt_set, actor=request.user, items=validated, **form.cleaned_data)
            messages.success(request, f"Saved {prompt_set.name} ({len(validated)} prompts).")
            return redirect("prompt-set-detail", pk=prompt_set.pk)
        status = 400
    return render(
        request,
        "prompts/edit.html",
        {"nav": "prompt-sets", "prompt_set": prompt_set, "form": form, "items": items},
        status=status,
    )
