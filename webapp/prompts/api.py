"""REST resource /api/v1/prompt-sets/: CRUD with ordered, nested prompt items."""

from django.conf import settings
from rest_framework import serializers, viewsets

from .models import PromptItem, PromptSet
from .serializers import PromptFieldsSerializer
from .services import prompt_set_create, prompt_set_delete, prompt_set_update


class PromptItemSerializer(PromptFieldsSerializer):
    def to_representation(self, item: PromptItem):
        return item.as_request_item()


def items_field(**kwargs) -> PromptItemSerializer:
    """A set's items: as many as a job may have prompts (a job renders the whole set)."""
    return PromptItemSerializer(many=True, allow_empty=False, max_length=settings.JOB_MAX_PROMPTS, **kwargs)


class PromptSetSerializer(serializers.ModelSerializer):
    owner = serializers.StringRelatedField()
    items = items_field()

    class Meta:
        model = PromptSet
        fields = ["id", "name", "owner", "trigger_word", "items", "created_at", "updated_at"]

    def validate(self, data):
        # A partial update validates nested items partially too; items sent must always be complete.
        if self.partial and "items" in self.initial_data:
            items = items_field(data=self.initial_data["items"])
            if not items.is_valid():
                raise serializers.ValidationError({"items": items.errors})
        return data


class PromptSetViewSet(viewsets.ModelViewSet):
    queryset = PromptSet.objects.select_related("owner").prefetch_related("items")
    serializer_class = PromptSetSerializer
    filterset_fields = ["owner", "name"]

    def perform_create(self, serializer):
        serializer.instance = prompt_set_create(owner=self.request.user, **serializer.validated_data)

    def perform_update(self, serializer):
        serializer.instance = prompt_set_update(
            prompt_set=serializer.instance, actor=self.request.user, **serializer.validated_data
        )

    def perform_destroy(self, instance):
        prompt_set_delete(prompt_set=instance, actor=self.request.user)
