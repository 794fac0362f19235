"""REST resource /api/v1/loras/: multipart upload, list, detail, delete, and whole training runs (runs/)."""

from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response

from webapp.core.catalog import DEFAULT_MODEL, MULTIPLIER_HIGH, MULTIPLIER_LOW
from webapp.prompts.ai_toolkit import TRAINING_CONFIG_MAX_BYTES
from workers.pipeline.params import MODEL_IDS

from .models import Lora, Visibility
from .runs import RunImport, lora_run_import, run_archive_read
from .selectors import lora_list
from .services import (
    NAME_MAX,
    TEXT_CHARS,
    LoraUpload,
    info_bounded,
    lora_delete,
    lora_upload,
    names_bounded,
    validate_upload_name,
)


class LoraSoftwareSerializer(serializers.Serializer):
    name = serializers.CharField(required=False)
    version = serializers.CharField(required=False)


class LoraInfoSerializer(serializers.Serializer):
    """The schema of `LoraSerializer.info` (the facts a header gave; absent ones left out)."""

    key_format = serializers.CharField(required=False)
    rank = serializers.IntegerField(required=False)
    alpha = serializers.FloatField(required=False, allow_null=True)
    num_blocks = serializers.IntegerField(required=False)
    hidden_size = serializers.IntegerField(required=False, allow_null=True)
    dtype = serializers.CharField(required=False)
    tensor_count = serializers.IntegerField(required=False)
    base_model = serializers.CharField(required=False, allow_null=True)
    training_step = serializers.IntegerField(required=False, allow_null=True)
    training_epoch = serializers.IntegerField(required=False, allow_null=True)
    output_name = serializers.CharField(required=False, allow_null=True)
    target_modules = serializers.ListField(child=serializers.CharField())
    trigger_words = serializers.ListField(child=serializers.CharField())
    software = LoraSoftwareSerializer()
    metadata = serializers.DictField(required=False, help_text="One LoRA's header metadata, bounded.")
    metadata_truncated = serializers.BooleanField(required=False)


class LoraSerializer(serializers.ModelSerializer):
    """A LoRA; its header facts bounded, since a header may hold megabytes of metadata: the list has a
    summary of `info`, one LoRA (detail, upload) adds the header metadata, each value cut to
    METADATA_VALUE_CHARS and all of it to METADATA_CHARS (`metadata_truncated` says when)."""

    INFO_KEYS = (  # what a client needs of `info`, all small
        "key_format",
        "rank",
        "alpha",
        "num_blocks",
        "hidden_size",
        "dtype",
        "tensor_count",
        "base_model",
        "training_step",
        "training_epoch",
        "output_name",
    )

    owner = serializers.StringRelatedField()
    target_modules = serializers.SerializerMethodField()
    info = serializers.SerializerMethodField(
        help_text="Facts read from the safetensors header; one LoRA's also has its `metadata`, bounded."
    )

    def _short(self, value):
        return value[:TEXT_CHARS] if isinstance(value, str) else value

    def get_target_modules(self, lora) -> list[str]:
        return names_bounded(lora.target_modules)

    @extend_schema_field(LoraInfoSerializer)
    def get_info(self, lora) -> dict:
        info = lora.info or {}
        software = info.get("software") if isinstance(info.get("software"), dict) else {}
        summary = {key: self._short(info.get(key)) for key in self.INFO_KEYS if key in info}
        summary["target_modules"] = names_bounded(info.get("target_modules"))
        summary["trigger_words"] = names_bounded(info.get("trigger_words"))
        summary["software"] = {key: self._short(str(software[key])) for key in ("name", "version") if key in software}
        if isinstance(self.parent, serializers.ListSerializer):
            return summary
        bounded = info_bounded(info)  # rows stored before storage was bounded too
        return {**summary, "metadata": bounded["metadata"], "metadata_truncated": bounded["metadata_truncated"]}

    class Meta:
        model = Lora
        fields = [
            "id",
            "name",
            "owner",
            "relative_path",
            "sha256",
            "size",
            "base_model",
            "trigger_word",
            "default_multiplier",
            "visibility",
            "key_format",
            "rank",
            "hidden_size",
            "num_blocks",
            "target_modules",
            "software_version",
            "training_run",
            "training_step",
            "version",
            "superseded",
            "info",
            "created_at",
        ]
        read_only_fields = ["training_run", "training_step", "version", "superseded"]
        extra_kwargs = {
            "training_run": {"help_text": "The ai-toolkit run this checkpoint is of (blank: none)."},
            "training_step": {"help_text": "The step it was saved at (its file name's, else its header's)."},
            "version": {"help_text": "1, then 2... each time a run's file of this name changed."},
            "superseded": {
                "help_text": "A newer version holds its name and path; its id and sha256 still name this one."
            },
        }


class LoraUploadSerializer(serializers.Serializer):
    """Fields left out take the header's trigger word and the defaults; for bytes already registered,
    a field given must agree with that LoRA (409 LORA_EXISTS otherwise)."""

    file = serializers.FileField(allow_empty_file=True)  # empty files get LORA_FILE_TRUNCATED
    name = serializers.CharField(
        max_length=200,
        required=False,
        validators=[validate_upload_name],
        help_text="Default: the header's ss_output_name, else the file name.",
    )
    trigger_word = serializers.CharField(
        max_length=200, required=False, allow_blank=True, help_text="Default: the header's most frequent tag."
    )
    default_multiplier = serializers.FloatField(
        min_value=MULTIPLIER_LOW, max_value=MULTIPLIER_HIGH, required=False, help_text="Default: 1.0."
    )
    base_model = serializers.ChoiceField(choices=MODEL_IDS, default=DEFAULT_MODEL)
    visibility = serializers.ChoiceField(choices=Visibility.values, required=False, help_text="Default: team.")


class LoraUploadResultSerializer(LoraSerializer):
    """The LoRA an upload came to, with `created` (false: these bytes were already registered)."""

    created = serializers.BooleanField()
    message = serializers.CharField()

    class Meta(LoraSerializer.Meta):
        fields = [*LoraSerializer.Meta.fields, "created", "message"]

    def to_representation(self, upload: LoraUpload):
        lora = LoraSerializer(upload.lora, context=self.context).data
        return {**lora, "created": upload.created, "message": upload.message}


class RunUploadSerializer(serializers.Serializer):
    """A training run's checkpoints, as files or as one zip of its folder, with its config.yaml if at hand."""

    files = serializers.ListField(
        child=serializers.FileField(allow_empty_file=True),
        required=False,
        allow_empty=False,
        help_text="One or more .safetensors of the run (or `archive`).",
    )
    archive = serializers.FileField(
        required=False, help_text="One .zip of the run folder: its *.safetensors and config.yaml are used."
    )
    config = serializers.FileField(
        required=False,
        allow_empty_file=True,
        help_text="The run's config.yaml: trigger word, multiplier and sample prompts (a prompt set).",
    )
    run = serializers.CharField(
        max_length=NAME_MAX,
        required=False,
        help_text="The run's name. Default: the config's `name`, else what the file names agree on.",
    )

    def validate(self, data):
        if ("files" in data) == ("archive" in data):
            raise serializers.ValidationError(
                {"files": ["Send the run's .safetensors as `files`, or its folder as one zip in `archive`."]},
                code="required",
            )
        return data


class RunRefusalSerializer(serializers.Serializer):
    file = serializers.CharField()
    code = serializers.CharField()
    message = serializers.CharField()


class RunImportSerializer(serializers.Serializer):
    """What an import of a run came to: LoRAs added, updated (new versions), unchanged, and files refused."""

    run = serializers.CharField()
    trigger_word = serializers.CharField(allow_blank=True)
    prompt_set = serializers.IntegerField(
        allow_null=True, help_text="The id of the prompt set of the run's samples (null without a config)."
    )
    added = LoraSerializer(many=True)
    updated = LoraSerializer(many=True, help_text="New versions of a file the run had with other bytes.")
    unchanged = LoraSerializer(many=True)
    refused = RunRefusalSerializer(many=True)
    notes = serializers.ListField(child=serializers.CharField())

    def to_representation(self, result: RunImport):
        loras = {key: LoraSerializer(getattr(result, key), many=True).data for key in ("added", "updated", "unchanged")}
        return {
            "run": result.run,
            "trigger_word": result.trigger_word,
            "prompt_set": result.prompt_set.pk if result.prompt_set else None,
            **loras,
            "refused": [{"file": file, "code": code, "message": message} for file, code, message in result.refused],
            "notes": result.notes,
        }


class LoraFilter(filters.FilterSet):
    superseded = filters.BooleanFilter(
        help_text="true: earlier versions only. The list shows current versions unless this is given."
    )

    class Meta:
        model = Lora
        fields = ["owner", "base_model", "sha256", "name", "visibility", "training_run", "superseded"]


class LoraViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    queryset = Lora.objects.none()  # per request: get_queryset
    serializer_class = LoraSerializer
    filterset_class = LoraFilter
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self):
        return lora_list(user=self.request.user)

    def get_serializer_class(self):
        return {"create": LoraUploadSerializer, "runs": RunUploadSerializer}.get(self.action, LoraSerializer)

    def filter_queryset(self, queryset):
        queryset = super().filter_queryset(queryset)
        if self.action == "list" and not self.request.query_params.get("superseded"):
            queryset = queryset.filter(superseded=False)
        return queryset

    @extend_schema(
        request=LoraUploadSerializer, responses={201: LoraUploadResultSerializer, 200: LoraUploadResultSerializer}
    )
    def create(self, request):
        """Upload a LoRA: 201 when registered now, 200 with `created: false` when these bytes already were."""
        upload = LoraUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        data = dict(upload.validated_data)
        file = data.pop("file")
        result = lora_upload(fh=file, filename=file.name, owner=request.user, **data)
        return Response(
            LoraUploadResultSerializer(result).data,
            status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        )

    @extend_schema(request=RunUploadSerializer, responses={201: RunImportSerializer})
    @action(detail=False, methods=["post"])
    def runs(self, request):
        """Import checkpoints of an ai-toolkit training run (files, or a zip of its folder), as one family of
        LoRAs: each at its step, the config's trigger word and multiplier, its samples a prompt set named after
        the run. Files already registered are `unchanged`; a file of the run with new bytes is `updated` (its
        next version). Several requests may add to the same run."""
        upload = RunUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        data = upload.validated_data
        config = data["config"].read(TRAINING_CONFIG_MAX_BYTES + 1) if "config" in data else None
        if "archive" in data:
            with run_archive_read(fh=data["archive"]) as archive:
                result = lora_run_import(
                    files=archive.files,
                    config=archive.config if config is None else config,
                    owner=request.user,
                    run=data.get("run"),
                    folder=archive.folder,
                )
        else:
            files = [(file.name, file) for file in data["files"]]
            result = lora_run_import(files=files, config=config, owner=request.user, run=data.get("run"))
        return Response(RunImportSerializer(result).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        lora_delete(lora=instance, actor=self.request.user)
