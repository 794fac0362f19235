"""Pages of the LoRA library (/loras/): search, upload, one LoRA's header facts, delete."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from webapp.core.errors import ApiError
from webapp.core.permissions import can_manage

from .forms import LibraryUploadForm
from .selectors import lora_get, lora_library, lora_owners
from .services import lora_delete, lora_upload


@login_required
@require_http_methods(["GET", "POST"])
def lora_list_page(request):
    """The library; a POST is an upload (the API's service), answered by the LoRA's page or the form's errors."""
    form = LibraryUploadForm()
    upload_error = None
    if request.method == "POST":
        form = LibraryUploadForm(request.POST, request.FILES)
        if form.is_valid():
            file = form.cleaned_data["file"]
            try:
                result = lora_upload(fh=file, filename=file.name, owner=request.user, **form.upload_fields())
            except ApiError as exc:
                upload_error = exc
            else:
                (messages.success if result.created else messages.info)(request, result.message)
                return redirect("lora-detail", pk=result.lora.pk)
    q, owner = request.GET.get("q", "").strip(), request.GET.get("owner", "").strip()
    context = {
        "nav": "loras",
        "loras": lora_library(user=request.user, q=q, owner=owner),
        "q": q,
        "owner": owner,
        "owners": lora_owners(user=request.user),
        "form": form,
        "upload_error": upload_error,
    }
    status = upload_error.status_code if upload_error else (400 if form.is_bound else 200)
    return render(request, "loras/list.html", context, status=status)


@login_required
def lora_detail_page(request, pk: int):
    lora = lora_get(pk=pk, user=request.user)
    return render(
        request, "loras/detail.html", {"nav": "loras", "lora": lora, "can_manage": can_manage(request.user, lora)}
    )


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
