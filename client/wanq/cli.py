"""The `wanq` command line. stdout carries results (ids, paths, tables); progress and errors go to stderr.

Exit codes: 0 done; 1 the job failed, was canceled or has no outputs yet; 2 refused (by the API: its
error code and message are printed; or before sending: a bad JSON file, no server configured; or a usage
error); 3 the server could not be reached or did not answer as the API; 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from wanq import __version__, config
from wanq.api import EXIT_JOB_FAILED, EXIT_REFUSED, EXIT_UNREACHABLE, Client, WanqError

FINISHED = ("succeeded", "failed", "canceled")
POLL_S = float(os.environ.get("WANQ_POLL_S", "1.0"))
UNREACHABLE_GRACE_S = 60.0  # while waiting, keep polling through a server restart this long

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


class Interrupted(Exception):
    """Ctrl-C while following a job: the job keeps running."""

    def __init__(self, request_id: str):
        self.request_id = request_id


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, help=__doc__)
@click.option("--url", help="The queue's base URL, e.g. http://127.0.0.1:8000 (else $WANQ_URL, else `wanq login`'s).")
@click.option("--token", help="An API token (else $WANQ_TOKEN, else the one `wanq login` stored).")
@click.version_option(__version__, prog_name="wanq")
@click.pass_context
def cli(ctx, url, token):
    ctx.obj = (url, token)


def _client(ctx, *, need_token: bool = True) -> Client:
    settings = config.resolve(*ctx.find_root().obj)
    if not settings.url:
        raise WanqError("NO_SERVER", "No server: set WANQ_URL, pass --url or run `wanq login`.", exit_code=EXIT_REFUSED)
    if need_token and not settings.token:
        raise WanqError(
            "NO_TOKEN", "No token: set WANQ_TOKEN, pass --token or run `wanq login`.", exit_code=EXIT_REFUSED
        )
    client = Client(settings.url, settings.token)
    ctx.call_on_close(client.close)
    return client


# --- login -----------------------------------------------------------------------------------------------


@cli.command()
@click.option("--username", "-u", help="Asked for when left out.")
@click.pass_context
def login(ctx, username):
    """Sign in with a username and password; store the server URL and an API token for later commands."""
    url, _ = ctx.find_root().obj
    url = url or os.environ.get("WANQ_URL") or config.load().get("url")
    if not url:
        url = click.prompt("Server URL", default="http://127.0.0.1:8000", err=True)
    username = username or click.prompt("Username", err=True)
    password = click.prompt("Password", hide_input=True, err=True)
    client = Client(url)
    ctx.call_on_close(client.close)
    token = client.token(username, password)
    path = config.save(client.url, token)
    err.print(f"Signed in to {client.url} as {username}; token stored in {path}")


# --- submit, follow, download ----------------------------------------------------------------------------


def _read_request(path: str) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WanqError("BAD_REQUEST_FILE", f"Cannot read {path}: {exc}", exit_code=EXIT_REFUSED) from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise WanqError("BAD_REQUEST_FILE", f"{path} is not valid JSON: {exc}", exit_code=EXIT_REFUSED) from None
    if not isinstance(body, dict):
        raise WanqError("BAD_REQUEST_FILE", f"{path} must hold one JSON object (a request).", exit_code=EXIT_REFUSED)
    return body


@cli.command()
@click.argument("request_file", metavar="REQUEST.json", type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="Show progress until the job ends, then download its videos.")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True, help="Where --wait saves."
)
@click.pass_context
def submit(ctx, request_file, wait, out_dir):
    """Submit a request in the ai-toolkit-inference format (POST /v1/inference).

    Prints the request id; with --wait, the paths of the downloaded MP4s instead, one per line.
    Ctrl-C while waiting leaves the job running."""
    body = _read_request(request_file)
    client = _client(ctx)
    request_id = client.submit(body)["request_id"]
    if not wait:
        click.echo(request_id)
        return
    err.print(f"Submitted request {request_id}")
    final = _follow(client, request_id)
    _finish(final)
    for path in _download_all(client, request_id, Path(out_dir)):
        click.echo(str(path))


def _follow(client: Client, request_id: str) -> dict:
    """Poll the status every POLL_S with one progress bar per prompt; returns the final status."""
    bars = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
    )
    tasks: list = []
    state = None
    unreachable_since = None
    try:
        with bars:
            while True:
                try:
                    status = client.status(request_id)
                    unreachable_since = None
                except WanqError as exc:
                    if exc.exit_code != EXIT_UNREACHABLE:
                        raise
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since > UNREACHABLE_GRACE_S:
                        raise
                    time.sleep(POLL_S)
                    continue
                if status.get("status") != state:
                    state = status.get("status")
                    bars.console.print(f"{request_id}: {state}")
                if status.get("stale") and state not in FINISHED:
                    bars.console.print("[yellow]its worker stopped reporting; the reconciler will requeue it[/]")
                _update_bars(bars, tasks, status)
                if state in FINISHED:
                    return status
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        raise Interrupted(request_id) from None


def _update_bars(bars: Progress, tasks: list, status: dict):
    progress = status.get("progress") or {}
    prompts = int(progress.get("prompts") or 0)
    while len(tasks) < prompts:
        tasks.append(bars.add_task(f"prompt {len(tasks) + 1}/{prompts}", total=None, start=False))
    if not tasks:
        return
    current = int(progress.get("prompt") or 0)
    done = status.get("status") == "succeeded"
    for index, task in enumerate(tasks):
        if index < current or done:
            total = bars.tasks[index].total or progress.get("steps") or 1
            bars.update(task, total=total, completed=total)
        elif index == current and status.get("status") == "in_progress":
            bars.start_task(task)
            bars.update(task, total=progress.get("steps") or None, completed=progress.get("step") or 0)


def _finish(status: dict):
    """Raise for a job that did not succeed (exit 1), with its error code and message."""
    state = status.get("status")
    if state == "succeeded":
        return
    code = status.get("error_code") or ("CANCELED" if state == "canceled" else "JOB_FAILED")
    message = status.get("error") or f"The job ended {state}."
    raise WanqError(code, message, exit_code=EXIT_JOB_FAILED)


def _download_all(client: Client, request_id: str, out_dir: Path, *, partial: bool = False) -> list[Path]:
    result = client.result(request_id)
    videos = (result.get("outputs") or {}).get("videos") or []
    state = result.get("status")
    if state != "succeeded" and not partial:
        _finish(result)
    if not videos:
        if state == "succeeded":
            return []
        raise WanqError(
            "NOT_FINISHED",
            f"Request {request_id} is {state} and has no outputs yet; "
            f"follow it with `wanq status {request_id} --wait`.",
            exit_code=EXIT_JOB_FAILED,
        )
    paths = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err
    ) as bars:
        for index, video in enumerate(videos):
            name = f"{request_id[:8]}_{index:03d}_seed{video.get('seed')}.mp4"
            task = bars.add_task(name, total=None)

            def advance(size, total, task=task):
                bars.update(task, advance=size, total=total)

            paths.append(client.download(video["url"], out_dir / name, advance).resolve())
    return paths


@cli.command()
@click.argument("request_id")
@click.option("--wait", is_flag=True, help="Follow it with progress bars until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's status object as JSON.")
@click.pass_context
def status(ctx, request_id, wait, as_json):
    """Show a request's status and progress (with --wait: exit 1 when it failed or was canceled)."""
    client = _client(ctx)
    body = _follow(client, request_id) if wait else client.status(request_id)
    if as_json:
        out.print_json(data=body)
    else:
        _print_status(body)
    if wait:
        _finish(body)
        err.print(f"Download its videos with `wanq download {request_id}`")


def _print_status(body: dict):
    progress = body.get("progress") or {}
    rows = [("request", body.get("request_id")), ("status", body.get("status"))]
    if progress.get("prompts"):
        rows.append(
            (
                "progress",
                f"prompt {int(progress.get('prompt', 0)) + 1}/{progress['prompts']}, "
                f"step {progress.get('step', 0)}/{progress.get('steps', '?')} "
                f"({100 * float(progress.get('fraction') or 0):.0f}% of all steps)",
            )
        )
    rows += [(key, body.get(key)) for key in ("created_at", "started_at", "finished_at")]
    if body.get("error_code") or body.get("error"):
        rows.append(("error", f"{body.get('error_code') or ''}: {body.get('error') or ''}"))
    if body.get("stale"):
        rows.append(("stale", "its worker stopped reporting; the reconciler will requeue it"))
    for key, value in rows:
        if value is not None:
            click.echo(f"{key:<12}{value}")


@cli.command()
@click.argument("request_id")
@click.pass_context
def cancel(ctx, request_id):
    """Cancel a queued or running request."""
    body = _client(ctx).cancel(request_id)
    click.echo(f"{body.get('request_id', request_id)} {body.get('status')}")


@cli.command()
@click.argument("job_id")
@click.pass_context
def retry(ctx, job_id):
    """Queue a failed or canceled job again (same id; POST /api/v1/jobs/ID/retry/)."""
    body = _client(ctx).retry(job_id)
    click.echo(f"{body.get('id', job_id)} {body.get('status')}")


@cli.command()
@click.argument("request_id")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.pass_context
def download(ctx, request_id, out_dir):
    """Download a request's MP4s into --out; prints their paths, one per line (a job still running: the
    videos of the prompts done so far)."""
    for path in _download_all(_client(ctx), request_id, Path(out_dir), partial=True):
        click.echo(str(path))


# --- LoRAs ----------------------------------------------------------------------------------------------


@cli.group()
def loras():
    """Upload and list the team's LoRAs."""


@loras.command("upload")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def loras_upload(ctx, files):
    """Upload ai-toolkit LoRA files (.safetensors); bytes already registered are not stored twice."""
    client = _client(ctx)
    failed = None
    for file in files:
        try:
            lora = client.lora_upload(Path(file))
        except WanqError as exc:
            _print_error(exc, prefix=f"{file}: ")
            failed = exc if failed is None or exc.exit_code > failed.exit_code else failed
            continue
        outcome = "created" if lora.get("created") else "already in the library"
        click.echo(f"{lora.get('name')} (id {lora.get('id')}): {outcome}")
    if failed:
        ctx.exit(failed.exit_code)


@loras.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the API's objects as JSON.")
@click.pass_context
def loras_list(ctx, as_json):
    """List the LoRAs you can use."""
    items = list(_client(ctx).loras())
    if as_json:
        out.print_json(data=items)
        return
    table = Table("id", "name", "owner", "rank", "trigger", "size", "path", box=None)
    for lora in items:
        table.add_row(
            str(lora.get("id")),
            str(lora.get("name")),
            str(lora.get("owner")),
            str(lora.get("rank") or ""),
            str(lora.get("trigger_word") or ""),
            _size(lora.get("size")),
            str(lora.get("relative_path") or ""),
        )
    out.print(table)


def _size(size) -> str:
    if not isinstance(size, int):
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


# --- entry point ----------------------------------------------------------------------------------------


def _print_error(exc: WanqError, prefix: str = ""):
    err.print(f"{prefix}error {exc.code}: {exc.message}", markup=False)
    details = exc.details if isinstance(exc.details, dict) else {}
    for field, problems in list(details.items())[:20]:
        if isinstance(problems, list):
            text = "; ".join(p.get("message", str(p)) if isinstance(p, dict) else str(p) for p in problems)
        else:
            text = str(problems)
        if text != exc.message and f"{field}: {text}" != exc.message:
            err.print(f"  {field}: {text}", markup=False)


def main(argv=None):
    try:
        code = cli.main(args=argv, prog_name="wanq", standalone_mode=False)
    except WanqError as exc:
        _print_error(exc)
        code = exc.exit_code
    except Interrupted as exc:
        err.print(
            f"Stopped waiting; request {exc.request_id} keeps running.\n"
            f"Follow it with `wanq status {exc.request_id} --wait`, "
            f"then `wanq download {exc.request_id}`; `wanq cancel {exc.request_id}` stops it.",
            markup=False,
        )
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (click.Abort, KeyboardInterrupt, EOFError):
        err.print("Aborted.")
        code = 130
    except Exception as exc:  # never a traceback, unless asked for
        if os.environ.get("WANQ_DEBUG"):
            raise
        err.print(f"error CLIENT_ERROR: {type(exc).__name__}: {exc} (WANQ_DEBUG=1 shows the traceback)", markup=False)
        code = EXIT_UNREACHABLE
    sys.exit(code if isinstance(code, int) else 0)
