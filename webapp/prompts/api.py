"""REST resource /api/v1/prompt-sets/: CRUD with ordered, nested prompt items; import from an ai-toolkit config."""

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from .ai_toolkit import TRAINING_CONFIG_MAX_BYTES, training_config_read
from .models import PromptItem, PromptSet
from .selectors import prompt_set_get
from .serializers import PromptFieldsSerializer
from .services import prompt_set_create, prompt_set_delete, prompt_set_import, prompt_set_update


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
        fields = ["id", "name", "owner", "trigger_word", "items", "notes", "created_at", "updated_at"]
        read_only_fields = ["notes"]

    def validate(self, data):
        # A partial update validates nested items partially too; items sent must always be complete.
        if self.partial and "items" in self.initial_data:
            items = items_field(data=self.initial_data["items"])
            if not items.is_valid():
                raise serializers.ValidationError({"items": items.errors})
        return data


class PromptSetImportSerializer(serializers.Serializer):
    config = serializers.FileField(
        allow_empty_file=True,  # an empty file gets INVALID_TRAINING_CONFIG
        help_text=f"An ai-toolkit training config (YAML or JSON), at most {TRAINING_CONFIG_MAX_BYTES} bytes.",
    )
    name = serializers.CharField(
        max_length=PromptSet._meta.get_field("name").max_length,
        required=False,
        allow_blank=True,
        help_text="Default: the run's name (config.name). Your set of that name, if any, has its prompts replaced.",
    )


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

    @extend_schema(request=PromptSetImportSerializer, responses={201: PromptSetSerializer})
    @action(detail=False, methods=["post"], url_path="import", parser_classes=[MultiPartParser, FormParser])
    def import_config(self, request):
        """Import the sample prompts of an ai-toolkit training config as a prompt set (notes say what changed)."""
        upload = PromptSetImportSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        config = training_config_read(upload.validated_data["config"].read(TRAINING_CONFIG_MAX_BYTES + 1))
        prompt_set = prompt_set_import(owner=request.user, config=config, name=upload.validated_data.get("name"))
        return Response(PromptSetSerializer(prompt_set_get(pk=prompt_set.pk)).data, status=status.HTTP_201_CREATED)
