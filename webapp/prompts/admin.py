from django.contrib import admin

from .models import PromptItem, PromptSet


class PromptItemInline(admin.StackedInline):
    model = PromptItem
    extra = 1
    fields = ["position", "prompt", "neg", "trigger_word", ("width", "height", "num_frames", "fps"),
              ("sample_steps", "guidance_scale", "seed")]


@admin.register(PromptSet)
class PromptSetAdmin(admin.ModelAdmin):
    list_display = ["name", "owner", "trigger_word", "updated_at"]
    search_fields = ["name", "items__prompt"]
    inlines = [PromptItemInline]

    def save_model(self, request, obj, form, change):
        if not change and obj.owner_id is None:
            obj.owner = request.user
        super().save_model(request, obj, form, change)
