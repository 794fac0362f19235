"""The library page's upload form: the fields of the API's upload, validated the same way."""

from django import forms

from webapp.core.catalog import MULTIPLIER_HIGH, MULTIPLIER_LOW

from .models import Visibility
from .services import NAME_MAX, validate_upload_name


class LibraryUploadForm(forms.Form):
    file = forms.FileField(allow_empty_file=True, widget=forms.ClearableFileInput(attrs={"accept": ".safetensors"}))
    name = forms.CharField(
        max_length=NAME_MAX,
        required=False,
        validators=[validate_upload_name],
        widget=forms.TextInput(attrs={"placeholder": "from the file"}),
    )
    trigger_word = forms.CharField(
        max_length=200, required=False, widget=forms.TextInput(attrs={"placeholder": "from the header"})
    )
    default_multiplier = forms.FloatField(
        min_value=MULTIPLIER_LOW,
        max_value=MULTIPLIER_HIGH,
        required=False,
        widget=forms.NumberInput(attrs={"placeholder": "1.0", "step": "0.05"}),
    )
    visibility = forms.ChoiceField(choices=Visibility.choices, initial=Visibility.TEAM)

    def upload_fields(self) -> dict:
        """The cleaned fields as `lora_upload` takes them: left blank means not given."""
        data = self.cleaned_data
        return {
            "name": data["name"] or None,
            "trigger_word": data["trigger_word"] or None,
            "default_multiplier": data["default_multiplier"],
            "visibility": data["visibility"],
        }


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Several files in one field (Django's documented pattern): a list, empty when none was chosen."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if not data:
            return single(None, initial) or []
        return [single(item, initial) for item in (data if isinstance(data, list | tuple) else [data])]


class RunUploadForm(forms.Form):
    """The library page's run upload: the checkpoints of one training run, or its folder as a zip, with its config."""

    files = MultipleFileField(
        required=False, allow_empty_file=True, widget=MultipleFileInput(attrs={"accept": ".safetensors"})
    )
    archive = forms.FileField(required=False, widget=forms.ClearableFileInput(attrs={"accept": ".zip"}))
    config = forms.FileField(
        required=False, allow_empty_file=True, widget=forms.ClearableFileInput(attrs={"accept": ".yaml,.yml"})
    )
    run = forms.CharField(
        max_length=NAME_MAX, required=False, widget=forms.TextInput(attrs={"placeholder": "from the config"})
    )

    def clean(self):
        data = super().clean()
        if bool(data.get("files")) == bool(data.get("archive")):
            raise forms.ValidationError("Choose the run's .safetensors files, or one zip of its folder.")
        return data
