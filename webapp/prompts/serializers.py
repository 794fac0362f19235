"""Validation of one prompt of the reference request schema, shared by every API."""

from django.conf import settings
from rest_framework import serializers

from workers.pipeline.params import LIMITS


def _int(name, **kw):
    low, high = LIMITS[name]
    return serializers.IntegerField(min_value=low, max_value=high, required=False, allow_null=True, **kw)


class PromptFieldsSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=settings.PROMPT_MAX_CHARS, trim_whitespace=False)
    trigger_word = serializers.CharField(max_length=200, required=False, allow_blank=True, allow_null=True)
    width = _int("width")
    height = _int("height")
    sample_steps = _int("sample_steps")
    guidance_scale = serializers.FloatField(
        min_value=LIMITS["guidance_scale"][0], max_value=LIMITS["guidance_scale"][1], required=False, allow_null=True
    )
    neg = serializers.CharField(
        max_length=settings.PROMPT_MAX_CHARS, required=False, allow_blank=True, allow_null=True, trim_whitespace=False
    )
    seed = serializers.IntegerField(min_value=-1, max_value=2**63 - 1, required=False, allow_null=True)
    num_frames = _int("num_frames")
    fps = _int("fps")
    sampler = serializers.CharField(
        max_length=50,
        required=False,
        allow_blank=True,
        allow_null=True,
        help_text="Accepted for compatibility; Wan uses the job's scheduler.",
    )
