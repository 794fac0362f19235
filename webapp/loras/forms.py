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
