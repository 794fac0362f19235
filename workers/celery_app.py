"""The Celery app: configured from Django settings (CELERY_*), JSON only, acks late, prefetch 1; and the
command line that starts one of its workers as a child process."""

import os
import sys

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("renderqueue", include=["workers.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")


def worker_argv(*, queues: str, name: str, loglevel: str = "INFO") -> list[str]:
    """`celery worker` for this app as a child of this Python: the solo pool, one task at a time (a GPU
    renders one job), consuming `queues` under the node `name`; no mingle or gossip, since a worker needs
    nothing from its peers and starts sooner without them."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "worker",
        "-Q",
        queues,
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "-n",
        name,
        "--loglevel",
        loglevel,
        "--without-mingle",
        "--without-gossip",
    ]
