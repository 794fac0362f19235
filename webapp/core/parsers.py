"""JSON bodies hold only what the database can store, nested no deeper than a request needs.

PostgreSQL's text and jsonb types reject the NUL character and unpaired UTF-16
surrogates, which JSON may spell as the escapes "\\u0000" and "\\ud800", and
jsonb rejects the non-finite numbers that a literal like 1e400 becomes. The
request is kept verbatim with its job, ignored keys included, so a body that
carries any of these anywhere is refused with the error DRF's fields give,
under the path of the offending value. A body nested deeper than MAX_DEPTH is
malformed: no request needs it, and Python's parser and every walk over the
data after it would run out of stack.
"""

import math

from rest_framework.exceptions import ErrorDetail, ParseError, ValidationError
from rest_framework.parsers import JSONParser

MAX_DEPTH = 32
TOO_DEEP = f"JSON parse error - the body is nested deeper than {MAX_DEPTH} levels."


def _problem(text: str) -> ErrorDetail | None:
    if "\x00" in text:
        return ErrorDetail("Null characters are not allowed.", code="null_characters_not_allowed")
    surrogate = next((c for c in text if "\ud800" <= c <= "\udfff"), None)
    if surrogate:
        return ErrorDetail(
            f"Surrogate characters are not allowed: U+{ord(surrogate):X}.", code="surrogate_characters_not_allowed"
        )
    return None


def _check(value, path: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ParseError(TOO_DEEP)
    if isinstance(value, str):
        if problem := _problem(value):
            raise ValidationError({path or "request": [problem]})
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError({path or "request": [ErrorDetail("This number is out of range.", code="invalid")]})
    elif isinstance(value, dict):
        for key, item in value.items():
            if problem := _problem(key):
                raise ValidationError({path or "request": [ErrorDetail(f"A key: {problem}", code=problem.code)]})
            _check(item, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]", depth + 1)


class StorableJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:  # the C decoder's own limit, far past MAX_DEPTH
            raise ParseError(TOO_DEEP) from None
        _check(data, "")
        return data
