"""Who may act on what: everyone on the team sees the shared queue; owners and staff change it."""

from rest_framework import status

from .errors import ApiError


def can_manage(user, obj) -> bool:
    return bool(user and (user.is_staff or (obj.owner_id is not None and obj.owner_id == user.pk)))


def require_manage(user, obj, *, what: str) -> None:
    """Raise PERMISSION_DENIED unless `user` owns `obj` or is staff."""
    if user is not None and not can_manage(user, obj):
        raise ApiError(
            "PERMISSION_DENIED",
            f"Only the owner of this {what} or staff may do that.",
            status_code=status.HTTP_403_FORBIDDEN,
        )
