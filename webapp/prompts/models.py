"""Prompt sets: ordered prompts with the per-prompt fields of the reference schema.

Blank fields fall back to the wan21_14b defaults when a job is submitted; the
job keeps its own resolved copy, so editing a set never changes a submitted job.
"""

from django.conf import settings
from django.db import models


class PromptSet(models.Model):
    name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="prompt_sets"
    )
    trigger_word = models.CharField(max_length=200, blank=True)
    notes = models.TextField(blank=True, help_text="Where the set came from and what was changed on import.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def request_items(self) -> list[dict]:
        """The prompts in the shape of a request's `prompts`, in order."""
        return [item.as_request_item() for item in self.items.all()]


class PromptItem(models.Model):
    prompt_set = models.ForeignKey(PromptSet, on_delete=models.CASCADE, related_name="items")
    position = models.PositiveIntegerField(default=0)
    prompt = models.TextField()
    trigger_word = models.CharField(max_length=200, blank=True)
    neg = models.TextField(blank=True)
    width = models.PositiveIntegerField(null=True, blank=True)
    height = models.PositiveIntegerField(null=True, blank=True)
    num_frames = models.PositiveIntegerField(null=True, blank=True)
    sample_steps = models.PositiveIntegerField(null=True, blank=True)
    guidance_scale = models.FloatField(null=True, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    fps = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        text = " ".join(self.prompt.split())
        return f"#{self.position}: {text[:60]}{'…' if len(text) > 60 else ''}"

    def as_request_item(self) -> dict:
        """The item in the shape of a request prompt (blank fields left out)."""
        fields = [
            "prompt",
            "trigger_word",
            "neg",
            "width",
            "height",
            "num_frames",
            "sample_steps",
            "guidance_scale",
            "seed",
            "fps",
        ]
        return {f: getattr(self, f) for f in fields if getattr(self, f) not in (None, "")}
