"""What the broker still holds: the job ids of job messages (render, fetch) waiting or unacknowledged.

The database is the truth about jobs; this lets the reconciler tell a queued job
whose message is gone (broker flushed or restarted) from one still waiting.
Task ids are "<job id>.<nonce>", so messages are matched without decoding bodies.
"""

from __future__ import annotations

import json
from pathlib import Path

from workers.celery_app import app

GPU_QUEUE = "gpu"
CPU_QUEUE = "celery"  # Celery's default queue: light tasks (the reconciler, LoRA URL fetches)


def job_id_of(task_id: str) -> str:
    return task_id.split(".", 1)[0]


def _redis_task_ids(channel) -> list[str]:
    client = channel.client
    raw = []
    for queue in (GPU_QUEUE, CPU_QUEUE):
        for pri in channel.priority_steps:
            raw += client.lrange(channel._q_for_pri(queue, pri), 0, -1)
    raw += [json.dumps(json.loads(v)[0]) for v in client.hvals(channel.unacked_key)]
    return [json.loads(m)["headers"]["id"] for m in raw]


def _filesystem_task_ids(options: dict) -> list[str]:
    ids = []
    for path in Path(options["data_folder_in"]).glob("*.msg"):
        try:
            ids.append(json.loads(path.read_text())["headers"]["id"])
        except (OSError, ValueError, KeyError):
            continue  # consumed meanwhile
    return ids


def queued_job_ids() -> set[str] | None:
    """Ids of jobs with a render message in the broker; None when this transport cannot be inspected."""
    with app.connection_for_read() as conn:
        transport = conn.transport_cls
        if transport in ("redis", "rediss"):
            return {job_id_of(t) for t in _redis_task_ids(conn.default_channel)}
        if transport == "filesystem":
            return {job_id_of(t) for t in _filesystem_task_ids(app.conf.broker_transport_options)}
    return None
