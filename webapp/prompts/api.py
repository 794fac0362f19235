"""REST resource /api/v1/prompt-sets/: CRUD with ordered, nested prompt items."""
from django.db import transaction
from rest_framework import serializers, viewsets

from webapp.core.permissions import require_manage

from .models import PromptItem, PromptSet
from .serializers import PromptFieldsSerializer


class PromptItemSerializer(PromptFieldsSerializer):
    def to_representation(self, item: PromptItem):
        return item.as_request_item()


class PromptSetSerializer(serializers.ModelSerializer):
    owner = serializers.StringRelatedField()
    items = PromptItemSerializer(many=True, allow_empty=False)

    class Meta:
        model = PromptSet
        fields = ["id", "name", "owner", "trigger_word", "items", "created_at", "updated_at"]

    def validate(self, data):
        # A partial update validates nested items partially too; items sent must always be complete.
        if self.partial and "items" in self.initial_data:
            items = PromptItemSerializer(data=self.initial_data["items"], many=True, allow_empty=False)
            if not items.is_valid():
                raise serializers.ValidationError({"items": items.errors})
        return data

    @transaction.atomic
    def create(self, validated):
        items = validated.pop("items")
        prompt_set = PromptSet.objects.create(**validated)
        self._write_items(prompt_set, items)
        return prompt_set

    @transaction.atomic
    def update(self, prompt_set, validated):
        items = validated.pop("items", None)
        for field, value in validated.items():
            setattr(prompt_set, field, value)
        prompt_set.save()
        if items is not None:
            prompt_set.items.all().delete()
            self._write_items(prompt_set, items)
        return prompt_set

    @staticmethod
    def _write_items(prompt_set, items):
        PromptItem.objects.bulk_create(
            PromptItem(prompt_set=prompt_set, position=i,
                       **{k: v for k, v in item.items() if k != "sampler" and v is not None})
            for i, item in enumerate(items))


class PromptSetViewSet(viewsets.ModelViewSet):
    queryset = PromptSet.objects.select_related("owner").prefetch_related("items")
    serializer_class = PromptSetSerializer
    filterset_fields = ["owner", "name"]

    def perform_create(self, serializer):
        serializer.save(owner=self.request.user)

    def perform_update(self, serializer):
        require_manage(self.request.user, serializer.instance, what="prompt set")
        serializer.save()

    def perform_destroy(self, instance):
        require_manage(self.request.user, instance, what="prompt set")
        instance.delete()
