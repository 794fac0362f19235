"""Sweeps: one job per cell of up to three axes (lora, multiplier, seed, prompt), and the labelled grids
composed from the cells' videos once every cell has finished.

A cell is an ordinary job (`GenerationJob.sweep` and `GenerationJob.sweep_cell`): cancel, retry,
priorities, permissions and webhooks work per cell. The first axis gives a grid's rows, the second its
columns, a third one grid per value; every prompt of the cells gets its own grids.
"""

import uuid

from django.conf import settings
from django.db import models

AXIS_FIELDS = ("lora", "multiplier", "seed", "prompt")


class SweepStatus(models.TextChoices):
    QUEUED = "queued"  # no cell has started
    RUNNING = "running"  # cells are rendering
    COMPOSING = "composing"  # every cell has finished; the grids are being made
    SUCCEEDED = "succeeded"  # every cell has finished and the grids are stored
    FAILED = "failed"  # the grids could not be made (error_code, error_message)
    CANCELED = "canceled"  # canceled by its owner; the grids of what finished are still made


class Sweep(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="sweeps"
    )
    model = models.CharField(max_length=50, default="wan21_14b")
    status = models.CharField(max_length=20, choices=SweepStatus.choices, default=SweepStatus.QUEUED, db_index=True)
    axes = models.JSONField(help_text='[{"field": ..., "values": [...]}]: rows, columns, then one grid per value.')
    base_loras = models.JSONField(default=list, blank=True, help_text='[{"lora": ref, "multiplier": x}] in every cell.')
    prompts = models.JSONField(default=list, blank=True, help_text="The prompts every cell renders (seeds fixed).")
    prompt_set = models.ForeignKey(
        "prompts.PromptSet", null=True, blank=True, on_delete=models.SET_NULL, related_name="sweeps"
    )
    options = models.JSONField(default=dict, blank=True, help_text="The job options every cell shares.")
    request = models.JSONField(default=dict, blank=True, help_text="The request as submitted.")
    canceled = models.BooleanField(default=False)
    grids_fingerprint = models.CharField(
        max_length=64, blank=True, help_text="Which finished cells the stored grids were composed from."
    )
    error_code = models.CharField(max_length=50, blank=True)
    error_message = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.status})"


class SweepGrid(models.Model):
    """One composed grid: the cells' videos of one prompt (and one value of a third axis) side by side,
    as an MP4 in which every cell plays in sync and a PNG contact sheet of the posters."""

    sweep = models.ForeignKey(Sweep, on_delete=models.CASCADE, related_name="grids")
    prompt_index = models.PositiveIntegerField()
    layer = models.PositiveIntegerField(default=0, help_text="Index of the third axis' value (0 without one).")
    video = models.FileField(max_length=300)
    image = models.FileField(max_length=300)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    num_frames = models.PositiveIntegerField()
    fps = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["layer", "prompt_index"]
        constraints = [
            models.UniqueConstraint(fields=["sweep", "prompt_index", "layer"], name="one_grid_per_prompt_and_layer")
        ]

    def __str__(self) -> str:
        return f"grid {self.prompt_index}/{self.layer} of {self.sweep_id}"
