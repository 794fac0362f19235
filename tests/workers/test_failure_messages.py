"""A failed job's message is read by every member: it carries no server paths."""

import pytest

from workers.attempt import public_message


@pytest.mark.parametrize(
    "exc,expected",
    [
        (
            FileNotFoundError(2, "No such file", "/srv/var/lora-cache/ab12.safetensors"),
            "FileNotFoundError: [Errno 2] No such file: 'ab12.safetensors'",
        ),
        (RuntimeError("shape mismatch\n  File /usr/lib/python3/site-packages/x.py"), "RuntimeError: shape mismatch"),
        (
            ValueError("cannot load /models/wan/transformer/config.json (bad JSON)"),
            "ValueError: cannot load config.json (bad JSON)",
        ),
    ],
)
def test_paths_are_cut_to_their_file_name(exc, expected):
    assert public_message(exc) == expected
