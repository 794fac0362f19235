"""JSON bodies hold only text the database can store.

PostgreSQL's text and jsonb types reject the NUL character and unpaired UTF-16
surrogates, which JSON may spell as the escapes "\\u0000" and "\\ud800". The
request is kept verbatim with its job, ignored keys included, so a body that
carries either anywhere is refused with the same error DRF's CharField gives,
under the path of the offending value.
"""

from rest_framework.exceptions import ErrorDetail, ValidationError
from rest_framework.parsers import JSONParser


def _problem(text: str) -> ErrorDetail | None:
    if "\x00" in text:
        return ErrorDetail("Null characters are not allowed.", code="null_characters_not_allowed")
    surrogate = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
    if surrogate:
        return ErrorDetail(
            f"Surrogate characters are not allowed: U+{ord(surrogate):X}.", code="surrogate_characters_not_allowed"
        )
    return None


def _check(value, path: str) -> None:
    if isinstance(value, str):
        if problem := _problem(value):
            raise ValidationError({path or "request": [problem]})
    elif isinstance(value, dict):
        for key, item in value.items():
            if problem := _problem(key):
                raise ValidationError({path or "request": [ErrorDetail(f"A key: {problem}", code=problem.code)]})
            _check(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")


class StorableJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        _check(data, "")
        return data
