"""JSON facts shown to people in the admin: key/value tables, with the raw JSON one click away."""

import json

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

LONG_TEXT = 300  # characters of one value shown in a table; the raw JSON has all of it


def scalar(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    return text if len(text) <= LONG_TEXT else text[:LONG_TEXT] + "…"


def kv_value(value, depth: int = 0):
    """One value of a key/value table: nested dicts as a nested table (one level), lists of scalars joined,
    lists of dicts one line each, long text cut (escaped; safe HTML only where built by format_html)."""
    if isinstance(value, SafeString):  # already built with format_html
        return value
    if isinstance(value, dict):
        if not value:
            return "-"
        if depth == 0:
            return kv_table(value, depth=1)
        return scalar(json.dumps(value, sort_keys=True, default=str))
    if isinstance(value, (list, tuple)):
        if not value:
            return "-"
        if all(isinstance(v, dict) for v in value):
            return format_html_join(
                format_html("<br>"),
                "{}",
                ((", ".join(f"{k}: {scalar(v)}" for k, v in item.items()),) for item in value),
            )
        return scalar(", ".join(scalar(v) for v in value))
    return scalar(value)


def ordered(data: dict, order=()) -> list[tuple]:
    """Items of `data`: the keys named in `order` first, in that order, then the rest alphabetically
    (PostgreSQL's jsonb keeps no key order)."""
    rank = {key: i for i, key in enumerate(order)}
    return sorted(data.items(), key=lambda item: (rank.get(item[0], len(rank)), str(item[0])))


def kv_table(data: dict, depth: int = 0, order=()) -> SafeString | str:
    """A dict as a two-column table."""
    if not data:
        return "-"
    return format_html(
        '<table class="kv"><tbody>{}</tbody></table>',
        format_html_join(
            "",
            '<tr><th scope="row">{}</th><td>{}</td></tr>',
            ((key, kv_value(value, depth)) for key, value in ordered(data, order)),
        ),
    )


def raw_json(data, summary: str = "raw JSON") -> SafeString:
    return format_html(
        '<details class="raw-json"><summary>{}</summary><pre>{}</pre></details>',
        summary,
        json.dumps(data, indent=2, sort_keys=True, default=str),
    )
