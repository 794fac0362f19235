"""A LoRA the service knows: its file in storage and what its header says.

Name, sha256 and relative path are each unique among the team's LoRAs and among one owner's, not
across owners: a user who registers bytes (or a name) that someone else holds privately gets a row
of their own, so nothing they do can tell them the private one exists (see `lora_register`)."""

from django.conf import settings
from django.db import models


def lora_upload_to(instance: "Lora", filename: str) -> str:
    return f"loras/{instance.sha256[:2]}/{instance.sha256}.safetensors"


class Visibility(models.TextChoices):
    TEAM = "team", "shared with the team"
    PRIVATE = "private", "private to its owner"


UNIQUE_PER_VIEWER = ("name", "sha256", "relative_path")


def unique_among(field: str, condition: models.Q | None = None) -> models.Q | None:
    """Names and paths are unique among current versions (an earlier version keeps its own); sha256 always."""
    if field != "sha256":
        condition = models.Q(superseded=False) & condition if condition else models.Q(superseded=False)
    return condition


class Lora(models.Model):
    name = models.CharField(max_length=200, db_index=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="loras"
    )
    file = models.FileField(upload_to=lora_upload_to, max_length=300)
    relative_path = models.CharField(
        max_length=500,
        db_index=True,
        null=True,
        blank=True,
        help_text="Path under the LoRA root, e.g. my_job/my_job.safetensors; requests may name the LoRA by it.",
    )
    sha256 = models.CharField(max_length=64, db_index=True, editable=False)
    size = models.BigIntegerField(editable=False)
    base_model = models.CharField(max_length=50, default="wan21_14b")
    trigger_word = models.CharField(max_length=200, blank=True)
    default_multiplier = models.FloatField(default=1.0)
    visibility = models.CharField(max_length=10, choices=Visibility.choices, default=Visibility.TEAM)
    key_format = models.CharField(max_length=30, editable=False)
    rank = models.PositiveIntegerField(editable=False)
    hidden_size = models.PositiveIntegerField(null=True, editable=False)
    num_blocks = models.PositiveIntegerField(editable=False)
    target_modules = models.JSONField(default=list, editable=False)
    software_version = models.CharField(max_length=50, blank=True, editable=False)
    training_run = models.CharField(
        max_length=200, blank=True, db_index=True, help_text="The ai-toolkit run (job name) this checkpoint is of."
    )
    training_step = models.PositiveIntegerField(null=True, blank=True, editable=False)
    version = models.PositiveIntegerField(default=1, editable=False, help_text="1, then 2… as its file changes.")
    superseded = models.BooleanField(
        default=False, editable=False, help_text="A newer version holds its name and path; ids and sha256 still work."
    )
    info = models.JSONField(default=dict, editable=False, help_text="Everything read from the safetensors header.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "LoRA"
        constraints = [
            *(
                models.UniqueConstraint(
                    fields=[field],
                    condition=unique_among(field, models.Q(visibility=Visibility.TEAM)),
                    name=f"lora_team_{field}_unique",
                )
                for field in UNIQUE_PER_VIEWER
            ),
            *(
                models.UniqueConstraint(
                    fields=["owner", field], condition=unique_among(field), name=f"lora_owner_{field}_unique"
                )
                for field in UNIQUE_PER_VIEWER
            ),
        ]

    def __str__(self) -> str:
        return self.name
