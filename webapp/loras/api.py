"""REST resource /api/v1/loras/: multipart upload, list, detail, delete."""
from django_filters import rest_framework as filters
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from webapp.core.catalog import DEFAULT_MODEL, MULTIPLIER_HIGH, MULTIPLIER_LOW
from workers.pipeline.params import MODEL_IDS

from .models import Lora, Visibility
from .selectors import lora_list
from .services import lora_delete, lora_register, validate_upload_name


class LoraSerializer(serializers.ModelSerializer):
    owner = serializers.StringRelatedField()

    class Meta:
        model = Lora
        fields = ["id", "name", "owner", "relative_path", "sha256", "size", "base_model", "trigger_word",
                  "default_multiplier", "visibility", "key_format", "rank", "hidden_size", "num_blocks", "target_modules",
                  "software_version", "training_step", "info", "created_at"]


class LoraUploadSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=True)  # empty files get LORA_FILE_TRUNCATED
    name = serializers.CharField(max_length=200, required=False, validators=[validate_upload_name])
    trigger_word = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    default_multiplier = serializers.FloatField(min_value=MULTIPLIER_LOW, max_value=MULTIPLIER_HIGH, default=1.0)
    base_model = serializers.ChoiceField(choices=MODEL_IDS, default=DEFAULT_MODEL)
    visibility = serializers.ChoiceField(choices=Visibility.values, default=Visibility.TEAM)


class LoraFilter(filters.FilterSet):
    class Meta:
        model = Lora
        fields = ["owner", "base_model", "sha256", "name", "visibility"]


class LoraViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
                  viewsets.GenericViewSet):
    queryset = Lora.objects.none()  # per request: get_queryset
    serializer_class = LoraSerializer
    filterset_class = LoraFilter
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        return lora_list(user=self.request.user)

    def get_serializer_class(self):
        return LoraUploadSerializer if self.action == "create" else LoraSerializer

    def create(self, request):
        upload = LoraUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        data = dict(upload.validated_data)
        file = data.pop("file")
        lora = lora_register(fh=file, filename=file.name, owner=request.user, **data)
        return Response(LoraSerializer(lora).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        lora_delete(lora=instance, actor=self.request.user)
