"""Pages load nothing from other hosts: every script, style, image and video is served by the project."""

import re
from pathlib import Path

import pytest
from django.urls import reverse

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"
EXTERNAL = re.compile(r"""(src|href|action|poster)\s*=\s*["'](https?:)?//""", re.IGNORECASE)


def test_no_template_points_at_another_host():
    offenders = [
        f"{path.relative_to(TEMPLATES)}:{n}"
        for path in TEMPLATES.rglob("*.html")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if EXTERNAL.search(line)
    ]
    assert offenders == []


@pytest.mark.django_db
@pytest.mark.parametrize("name", ["queue", "job-new", "lora-list", "prompt-set-list"])
def test_rendered_pages_point_at_no_other_host(client, django_user_model, name):
    client.force_login(django_user_model.objects.create_user("member"))
    page = client.get(reverse(name)).content.decode()
    assert not EXTERNAL.search(page)
