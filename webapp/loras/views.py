"""Pages of the LoRA library (/loras/): search, upload (a LoRA, or a training run), one LoRA's header facts,
its run and versions, delete."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.urls import NoReverseMatch, reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_http_methods, require_POST

from webapp.core.errors import ApiError
from webapp.core.permissions import can_manage
from webapp.prompts.ai_toolkit import TRAINING_CONFIG_MAX_BYTES

from .forms import LibraryUploadForm, RunUploadForm
from .runs import RunImport, lora_run_import, run_archive_read
from .selectors import lora_get, lora_library, lora_owners, lora_run, lora_versions
from .services import lora_delete, lora_upload


def _library(request, *, form=None, run_form=None, upload_error=None, run_error=None):
    """The library page, with the upload forms as given (bound ones show their errors)."""
    form, run_form = form or LibraryUploadForm(), run_form or RunUploadForm()
    q, owner, run = (request.GET.get(key, "").strip() for key in ("q", "owner", "run"))
    superseded = request.GET.get("superseded") == "true"
    context = {
        "nav": "loras",
        "loras": lora_library(user=request.user, q=q, owner=owner, run=run, superseded=superseded),
        "q": q,
        "owner": owner,
        "run": run,
        "superseded": superseded,
        "owners": lora_owners(user=request.user),
        "form": form,
        "upload_error": upload_error,
        "run_form": run_form,
        "run_error": run_error,
        "compare_url": _compare_url(run) if run else None,
    }
    error = upload_error or run_error
    status = error.status_code if error else (400 if form.is_bound or run_form.is_bound else 200)
    return render(request, "loras/list.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def lora_list_page(request):
    """The library; a POST is an upload (the API's service), answered by the LoRA's page or the form's errors."""
    if request.method == "GET":
        return _library(request)
    form = LibraryUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        return _library(request, form=form)
    file = form.cleaned_data["file"]
    try:
        result = lora_upload(fh=file, filename=file.name, owner=request.user, **form.upload_fields())
    except ApiError as exc:
        return _library(request, form=form, upload_error=exc)
    (messages.success if result.created else messages.info)(request, result.message)
    return redirect("lora-detail", pk=result.lora.pk)


@login_required
@require_POST
def lora_run_upload_page(request):
    """A training run uploaded from the library page (the API's service): answered by the library showing
    the run's checkpoints, or the library with the form's errors."""
    run_form = RunUploadForm(request.POST, request.FILES)
    if not run_form.is_valid():
        return _library(request, run_form=run_form)
    data = run_form.cleaned_data
    config = data["config"].read(TRAINING_CONFIG_MAX_BYTES + 1) if data["config"] else None
    try:
        if data["archive"]:
            with run_archive_read(fh=data["archive"]) as archive:
                result = lora_run_import(
                    files=archive.files,
                    config=archive.config if config is None else config,
                    owner=request.user,
                    run=data["run"] or None,
                    folder=archive.folder,
                )
        else:
            files = [(file.name, file) for file in data["files"]]
            result = lora_run_import(files=files, config=config, owner=request.user, run=data["run"] or None)
    except ApiError as exc:
        return _library(request, run_form=run_form, run_error=exc)
    _run_messages(request, result)
    return redirect(f"{reverse('lora-list')}?{urlencode({'run': result.run})}")


def _run_messages(request, result: RunImport) -> None:
    prompts = f"; its samples are the prompt set {result.prompt_set.name}" if result.prompt_set else ""
    (messages.success if result.added or result.updated else messages.info)(
        request, f"Run {result.run}: {result.summary}{prompts}."
    )
    for file, code, message in result.refused:
        messages.error(request, f"{file}: {code}: {message}")
    for note in result.notes:
        messages.info(request, note)


def _compare_url(run: str) -> str:
    """The sweep page set to compare a run's checkpoints."""
    try:
        base = reverse("sweep-new")
    except NoReverseMatch:
        base = "/sweeps/new/"
    return f"{base}?{urlencode({'run': run})}"


@login_required
def lora_detail_page(request, pk: int):
    lora = lora_get(pk=pk, user=request.user)
    context = {
        "nav": "loras",
        "lora": lora,
        "can_manage": can_manage(request.user, lora),
        "versions": list(lora_versions(lora=lora, user=request.user)),
        "current": None,
    }
    if lora.superseded:
        context["current"] = next((v for v in context["versions"] if not v.superseded), None)
    if lora.training_run:
        context["run_loras"] = list(lora_run(run=lora.training_run, user=request.user))
        context["compare_url"] = _compare_url(lora.training_run)
    return render(request, "loras/detail.html", context)


@login_required
@require_POST
def lora_delete_page(request, pk: int):
    lora = lora_get(pk=pk, user=request.user)
    try:
        lora_delete(lora=lora, actor=request.user)
    except ApiError as exc:
        raise PermissionDenied(exc.message) from None
    messages.success(request, f"Deleted {lora.name}.")
    return redirect("lora-list")
