"""The Celery app: configured from Django settings (CELERY_*), JSON only, acks late, prefetch 1."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("renderqueue", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
