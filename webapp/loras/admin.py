from django import forms
from django.contrib import admin, messages

from webapp.core.errors import ApiError

from .models import Lora
from .services import lora_register, validate_upload_name


class LoraUploadForm(forms.ModelForm):
    class Meta:
        model = Lora
        fields = ["file", "name", "trigger_word", "default_multiplier", "visibility"]

    def clean(self):
        data = super().clean()
        upload = data.get("file")
        if data.get("name"):
            validate_upload_name(data["name"])
        if upload:
            try:
                self.instance = lora_register(
                    fh=upload, filename=upload.name, owner=self.current_user,
                    name=data.get("name") or None,
                    trigger_word=data.get("trigger_word") or "",
                    default_multiplier=1.0 if data.get("default_multiplier") is None else data["default_multiplier"],
                    visibility=data.get("visibility") or "team")
            except ApiError as exc:
                raise forms.ValidationError(f"{exc.code}: {exc.message}") from None
        return data


@admin.register(Lora)
class LoraAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "visibility", "base_model", "rank", "key_format", "software_version", "training_step",
                    "size", "created_at"]
    list_filter = ["base_model", "key_format", "owner"]
    search_fields = ["name", "relative_path", "sha256", "trigger_word"]
    readonly_fields = ["sha256", "size", "key_format", "rank", "hidden_size", "num_blocks", "target_modules",
                       "software_version", "training_step", "info", "created_at"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = type("LoraUploadForm", (LoraUploadForm,), {"current_user": request.user})
            kwargs["fields"] = LoraUploadForm.Meta.fields
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            obj.save()
        else:
            messages.info(request, f"Inspected {obj.key_format} LoRA, rank {obj.rank}, {obj.num_blocks} blocks.")
