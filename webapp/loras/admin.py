"""Admin: upload and inspect LoRAs; what the safetensors header says, readable, with the raw JSON one click away."""

from django import forms
from django.contrib import admin, messages
from django.template.defaultfilters import filesizeformat
from django.utils.html import format_html

from webapp.core.display import kv_table, raw_json, scalar
from webapp.core.errors import ApiError

from .models import Lora
from .services import lora_register, validate_upload_name

INFO_ORDER = [
    "key_format",
    "rank",
    "alpha",
    "hidden_size",
    "num_blocks",
    "target_modules",
    "dtype",
    "tensor_count",
    "base_model",
    "software",
    "training_step",
    "training_epoch",
    "output_name",
    "trigger_words",
    "metadata",
]


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
                    fh=upload,
                    filename=upload.name,
                    owner=self.current_user,
                    name=data.get("name") or None,
                    trigger_word=data.get("trigger_word") or "",
                    default_multiplier=1.0 if data.get("default_multiplier") is None else data["default_multiplier"],
                    visibility=data.get("visibility") or "team",
                )
            except ApiError as exc:
                raise forms.ValidationError(f"{exc.code}: {exc.message}") from None
        return data


@admin.register(Lora)
class LoraAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "owner",
        "visibility",
        "base_model",
        "rank",
        "key_format",
        "software_version",
        "training_run",
        "training_step",
        "version",
        "superseded",
        "file_size",
        "created_at",
    ]
    list_filter = ["superseded", "base_model", "key_format", "owner"]
    search_fields = ["name", "relative_path", "sha256", "trigger_word", "training_run"]
    header_fields = [
        "format",
        "rank",
        "hidden_size",
        "blocks",
        "modules",
        "trained_with",
        "training_step",
        "header_trigger_words",
        "alpha",
        "dtype",
    ]
    readonly_fields = [
        "file_name",
        "base_model",
        "sha256",
        "file_size",
        "version",
        "superseded",
        *header_fields,
        "header_info",
        "created_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "owner", "visibility", "trigger_word", "default_multiplier", "relative_path"]}),
        ("Training run", {"fields": ["training_run", "version", "superseded"]}),
        ("File", {"fields": ["file_name", "file_size", "sha256", "base_model", "created_at"]}),
        ("Header", {"fields": header_fields}),
        ("Everything the header says", {"fields": ["header_info"]}),
    ]

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = type("LoraUploadForm", (LoraUploadForm,), {"current_user": request.user})
            kwargs["fields"] = LoraUploadForm.Meta.fields
        return super().get_form(request, obj, **kwargs)

    def get_fieldsets(self, request, obj=None):
        return [(None, {"fields": LoraUploadForm.Meta.fields})] if obj is None else self.fieldsets

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            obj.save()
        else:
            messages.info(request, f"Inspected {obj.key_format} LoRA, rank {obj.rank}, {obj.num_blocks} blocks.")

    @admin.display(description="size", ordering="size")
    def file_size(self, lora):
        return format_html('<span title="{} bytes">{}</span>', lora.size, filesizeformat(lora.size))

    @admin.display(description="file")
    def file_name(self, lora):
        return lora.file.name or "-"

    @admin.display(description="format")
    def format(self, lora):
        return lora.key_format

    @admin.display(description="blocks")
    def blocks(self, lora):
        return lora.num_blocks

    @admin.display(description="target modules")
    def modules(self, lora):
        return ", ".join(lora.target_modules) or "-"

    @admin.display(description="trained with")
    def trained_with(self, lora):
        name = (lora.info.get("software") or {}).get("name") or "ai-toolkit"
        return f"{name} {lora.software_version}" if lora.software_version else "-"

    @admin.display(description="trigger words (header)")
    def header_trigger_words(self, lora):
        return ", ".join(lora.info.get("trigger_words") or []) or "-"

    @admin.display(description="alpha")
    def alpha(self, lora):
        return scalar(lora.info.get("alpha"))

    @admin.display(description="dtype")
    def dtype(self, lora):
        return scalar(lora.info.get("dtype"))

    @admin.display(description="info")
    def header_info(self, lora):
        return format_html("{}{}", kv_table(lora.info, order=INFO_ORDER), raw_json(lora.info))
