"""The one error shape of every API: {"error": {"code", "message", "details"}}.

Services raise `ApiError` (or a subclass) with a stable `code`; DRF's own
exceptions are mapped onto the same shape so a client can switch on `code`.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


class ApiError(Exception):
    status_code = status.HTTP_400_BAD_REQUEST

    def __init__(self, code: str, message: str, *, details: dict | None = None, status_code: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}
        if status_code is not None:
            self.status_code = status_code


class NotFound(ApiError):
    status_code = status.HTTP_404_NOT_FOUND


class Conflict(ApiError):
    status_code = status.HTTP_409_CONFLICT


def error_body(code: str, message: str, details=None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _flatten(detail, prefix="") -> dict[str, list[dict]]:
    """DRF's nested ValidationError detail -> {"prompts[0].width": [{"code", "message"}]}."""
    if isinstance(detail, dict):
        out = {}
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(key, int):  # list serializers report items by index
                name = f"{prefix}[{key}]"
            if key == "non_field_errors":
                name = prefix or "request"
            out.update(_flatten(value, name))
        return out
    if isinstance(detail, list):
        if all(isinstance(item, exceptions.ErrorDetail) for item in detail):
            return {prefix or "request": [{"code": item.code, "message": str(item)} for item in detail]}
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}[{index}]"))
        return out
    return {prefix or "request": [{"code": getattr(detail, "code", "invalid"), "message": str(detail)}]}


_DRF_CODES = {
    exceptions.NotAuthenticated: "NOT_AUTHENTICATED",
    exceptions.AuthenticationFailed: "AUTHENTICATION_FAILED",
    exceptions.PermissionDenied: "PERMISSION_DENIED",
    exceptions.NotFound: "NOT_FOUND",
    exceptions.MethodNotAllowed: "METHOD_NOT_ALLOWED",
    exceptions.NotAcceptable: "NOT_ACCEPTABLE",
    exceptions.UnsupportedMediaType: "UNSUPPORTED_MEDIA_TYPE",
    exceptions.Throttled: "RATE_LIMITED",
    exceptions.ParseError: "MALFORMED_REQUEST",
}


def api_exception_handler(exc, context):
    if isinstance(exc, ApiError):
        return Response(error_body(exc.code, exc.message, exc.details), status=exc.status_code)
    if isinstance(exc, RequestDataTooBig):  # Django's own check, else an HTML 400 page (a traceback with DEBUG)
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            error_body("REQUEST_TOO_LARGE", f"The request body is larger than {limit} bytes.", {"max_bytes": limit}),
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return Response(error_body("MALFORMED_REQUEST", "The request has too many form fields or files."), status=400)
    if isinstance(exc, RecursionError):  # JSON nested past Python's stack, where a view keeps DRF's own JSONParser
        return Response(
            error_body("MALFORMED_REQUEST", "JSON parse error - the body is nested too deeply."), status=400
        )
    if isinstance(exc, OverflowError):  # an id or filter past 64 bits, which SQLite cannot even compare
        return Response(error_body("VALIDATION_ERROR", "A number in the request is out of range."), status=400)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        details = _flatten(exc.detail)
        first_field, problems = next(iter(details.items()))
        body = error_body("VALIDATION_ERROR", f"{first_field}: {problems[0]['message']}", details)
    else:
        code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "ERROR")
        body = error_body(code, str(exc.detail))
    response.data = body
    return response


def _is_api(request) -> bool:
    return request.path.startswith(("/v1/", "/api/", "/health"))


def handler404(request, exception=None):
    if _is_api(request):
        return JsonResponse(error_body("NOT_FOUND", "No such resource."), status=404)
    return defaults.page_not_found(request, exception)


def handler500(request):
    if _is_api(request):
        return JsonResponse(error_body("INTERNAL_ERROR", "The server failed; the error was logged."), status=500)
    return defaults.server_error(request)


def add_error_responses(result, generator, request, public):
    """drf-spectacular hook: document the error shape on every operation, so clients and schema
    checkers know each 4xx body is {"error": {"code", "message", "details"}}."""
    components = result.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message", "details"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {"type": "object"},
                },
            }
        },
    }
    error = {
        "description": "Error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    for path in result.get("paths", {}).values():
        for operation in path.values():
            for status_code in ("400", "401", "403", "404", "409", "413", "415", "429", "502", "504"):
                operation.setdefault("responses", {}).setdefault(status_code, error)
    return result
