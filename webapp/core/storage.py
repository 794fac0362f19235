"""Where files live: local disk (a path) or an object store (a URL, presigned when the bucket is private)."""

from django.core.files.storage import default_storage


def storage_is_local() -> bool:
    try:
        default_storage.path("")
        return True
    except NotImplementedError:
        return False


def storage_location(name: str) -> str:
    """A local path, or the object's URL."""
    return default_storage.path(name) if storage_is_local() else default_storage.url(name)
