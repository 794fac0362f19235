"""The `wanq` command line. stdout carries results (ids, paths, tables); progress and errors go to stderr.

Exit codes: 0 done; 1 the job or sweep failed or was canceled (a sweep: also when a cell of it did not
render), or has no outputs yet; 2 refused (by the API: its error code and message are printed; or before
sending: a bad JSON file, no server configured; or a usage error; `import-run`: a checkpoint refused);
3 the server could not be reached or did not answer as the API; 130 interrupted.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
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
    """Ctrl-C while following a job or a sweep: it keeps running; `hint` says how to follow it again."""

    def __init__(self, what: str, hint: str):
        self.what = what
        self.hint = hint


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
    client = Client(url)
    ctx.call_on_close(client.close)
    username = username or click.prompt("Username", err=True)
    password = click.prompt("Password", hide_input=True, err=True)
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
    for path in _download_all(client, client.result(request_id), Path(out_dir)):
        click.echo(str(path))


def _poll(
    fetch: Callable[[], dict],
    show: Callable[[dict], None],
    *,
    ended: Callable[[dict], bool],
    name: str,
    what: str,
    command: str,
) -> dict:
    """Fetch a job's or a sweep's status every POLL_S and show it until it has `ended`; returns the final one.
    Prints each change of state; keeps polling through a server restart for UNREACHABLE_GRACE_S; Ctrl-C
    raises Interrupted (what was submitted keeps running), saying which `command` follows, downloads or
    cancels the `what` called `name`."""
    state = None
    unreachable_since = None
    try:
        while True:
            try:
                status = fetch()
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
                err.print(f"{name}: {state}", markup=False)
            show(status)
            if ended(status):
                return status
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        raise Interrupted(
            f"{what} {name}",
            f"Follow it with `{command} status {name} --wait`, then `{command} download {name}`; "
            f"`{command} cancel {name}` stops it.",
        ) from None


def _follow(client: Client, request_id: str) -> dict:
    """Follow a request with one progress bar per prompt; returns the final status."""
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

    def show(status: dict):
        if status.get("stale") and status.get("status") not in FINISHED:
            bars.console.print("[yellow]its worker stopped reporting; the reconciler will requeue it[/]")
        _update_bars(bars, tasks, status)

    with bars:
        return _poll(
            lambda: client.status(request_id),
            show,
            ended=lambda status: status.get("status") in FINISHED,
            name=request_id,
            what="request",
            command="wanq",
        )


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


def _download_all(client: Client, result: dict, out_dir: Path) -> list[Path]:
    """The videos of a request's `result` (GET /v1/requests/ID/result) that exist; one still queued or
    running without any yet raises NOT_FINISHED (exit 1)."""
    request_id = str(result.get("request_id"))
    videos = (result.get("outputs") or {}).get("videos") or []
    state = result.get("status")
    if not videos and state not in FINISHED:
        raise WanqError(
            "NOT_FINISHED",
            f"Request {request_id} is {state} and has no outputs yet; "
            f"follow it with `wanq status {request_id} --wait`.",
            exit_code=EXIT_JOB_FAILED,
        )
    files = [
        (video["url"], f"{request_id[:8]}_{index:03d}_seed{video.get('seed')}.mp4")
        for index, video in enumerate(videos)
    ]
    return _download_files(client, files, out_dir)


def _transfer_bars() -> Progress:
    """One bar per file moved: bytes so far, total, speed."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err)


def _download_files(client: Client, files: list[tuple[str, str]], out_dir: Path) -> list[Path]:
    """Download (url, file name) pairs into `out_dir`, one progress bar each; returns their absolute paths."""
    paths = []
    with _transfer_bars() as bars:
        for url, name in files:
            task = bars.add_task(name, total=None)

            def moved(done, total, task=task):
                bars.update(task, completed=done, total=total)

            paths.append(client.download(url, out_dir / name, moved).resolve())
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
    _show(body, as_json=as_json, table=_print_status)
    if wait:
        _finish(body)
        err.print(f"Download its videos with `wanq download {request_id}`", markup=False)


def _show(body: dict, *, as_json: bool, table):
    """Print a request's or sweep's state: the API's object as JSON, or `table`'s rows for people."""
    if as_json:
        out.print_json(data=body)
    else:
        table(body)


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
    videos of the prompts done so far; one that failed or was canceled: those it made, then exit 1)."""
    client = _client(ctx)
    result = client.result(request_id)
    paths = _download_all(client, result, Path(out_dir))
    for path in paths:
        click.echo(str(path))
    state = result.get("status")
    if state in ("failed", "canceled"):
        if not paths:
            err.print(f"Request {request_id} {state} before it made a video: nothing to download.", markup=False)
        _finish(result)


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


# --- training runs --------------------------------------------------------------------------------------

RUN_CONFIG = "config.yaml"
CHECKPOINT_STEP = re.compile(r"_([0-9]{9})$")  # ai-toolkit pads a checkpoint's step to 9 digits


def _checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_STEP.search(path.stem)
    return int(match[1]) if match else None


def _run_checkpoints(directory: Path) -> list[Path]:
    """A run folder's checkpoints in the order they were saved: by step, the final `<name>.safetensors` last."""
    files = [path for path in directory.iterdir() if path.is_file() and path.suffix.lower() == ".safetensors"]
    return sorted(files, key=lambda path: (_checkpoint_step(path) is None, _checkpoint_step(path) or 0, path.name))


@cli.command("import-run")
@click.argument("directory", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--run", "run_name", help="The run's name. Default: the config's `name`, else the file names'.")
@click.option("--no-config", is_flag=True, help=f"Leave DIR/{RUN_CONFIG} out (no trigger word or prompt set from it).")
@click.pass_context
def import_run(ctx, directory, run_name, no_config):
    """Upload an ai-toolkit training run folder: its checkpoints (DIR/*.safetensors, one request each)
    become LoRAs of one run at their steps; its config.yaml gives their trigger word and a prompt set of
    its sample prompts. Files already uploaded are unchanged, changed ones get a new version.

    Prints a table of the files and what became of each, then the run. Exit 2 when a file was refused
    (the others are still uploaded); a refusal of a whole request (the config, the run name) stops there."""
    checkpoints = _run_checkpoints(directory)
    if not checkpoints:
        raise WanqError("NO_CHECKPOINTS", f"{directory} holds no .safetensors files.", exit_code=EXIT_REFUSED)
    config_file = None if no_config else directory / RUN_CONFIG
    if config_file is not None and not config_file.is_file():
        err.print(f"{directory} has no {RUN_CONFIG}: no trigger word or prompt set from it.", markup=False)
        config_file = None
    client = _client(ctx)
    run, trigger_word, prompt_set = run_name, "", None
    rows: list[tuple[str, str, str, str]] = []  # file, step, LoRA id, result
    any_refused = stopped = None
    with _transfer_bars() as bars:
        for index, path in enumerate(checkpoints):
            task = bars.add_task(escape(path.name), total=path.stat().st_size)
            try:
                answer = client.run_upload(
                    path,
                    config=config_file,
                    run=run,
                    on_bytes=lambda done, total, task=task: bars.update(task, completed=done, total=total),
                )
            except WanqError as exc:
                stopped = exc
                rows.append((path.name, _step_text(_checkpoint_step(path)), "", f"refused {exc.code} {exc.message}"))
                rows += [
                    (rest.name, _step_text(_checkpoint_step(rest)), "", "not sent") for rest in checkpoints[index + 1 :]
                ]
                break
            # Later requests name the run as the first answer did, and leave the config out once a
            # checkpoint has joined the run: the server keeps its trigger word and multiplier with the run.
            run = answer.get("run") or run
            trigger_word = answer.get("trigger_word") or trigger_word
            prompt_set = answer.get("prompt_set") or prompt_set
            imported = False
            for outcome in ("added", "updated", "unchanged"):
                for lora in answer.get(outcome) or []:
                    imported = True
                    shown = f"updated (version {lora.get('version')})" if outcome == "updated" else outcome
                    rows.append((path.name, _step_text(lora.get("training_step")), str(lora.get("id")), shown))
            for problem in answer.get("refused") or []:
                any_refused = problem
                file = str(problem.get("file") or path.name)
                result = f"refused {problem.get('code')} {problem.get('message')}"
                rows.append((file, _step_text(_checkpoint_step(Path(file))), "", result))
            for note in answer.get("notes") or []:
                bars.console.print(note, markup=False)
            if imported:
                config_file = None
    table = Table("file", "step", "id", "result", box=None)
    for row in rows:
        table.add_row(*map(escape, row))
    out.print(table)
    if run:
        _print_run(client, run=run, trigger_word=trigger_word, prompt_set=prompt_set)
    if stopped:
        raise stopped
    if any_refused:
        ctx.exit(EXIT_REFUSED)


def _step_text(step) -> str:
    return "" if step is None else str(step)


def _print_run(client: Client, *, run: str, trigger_word: str, prompt_set: int | None):
    click.echo(f"{'run':<14}{run}")
    click.echo(f"{'trigger word':<14}{trigger_word or '(none)'}")
    if prompt_set is None:
        click.echo(f"{'prompt set':<14}(none from this import)")
        return
    try:
        shown = client.prompt_set(prompt_set)
    except WanqError:  # the run is imported; only its prompt set's name is not at hand
        click.echo(f"{'prompt set':<14}id {prompt_set}")
        return
    prompts = len(shown.get("items") or [])
    click.echo(f"{'prompt set':<14}{shown.get('name')} (id {prompt_set}, {prompts} prompt{'s' * (prompts != 1)})")
    for item in (shown.get("items") or [])[:20]:
        click.echo(f"{'':<14}- {item.get('prompt')}")


# --- sweeps ---------------------------------------------------------------------------------------------


@cli.group("sweep")
def sweep_group():
    """Compare LoRAs, multipliers, seeds or prompts: one job per cell of up to three axes, composed into grids."""


@sweep_group.command("submit")
@click.argument("request_file", metavar="SWEEP.json", type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="Show the sweep's progress until it ends, then download its grids.")
@click.option(
    "--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True, help="Where --wait saves."
)
@click.pass_context
def sweep_submit(ctx, request_file, wait, out_dir):
    """Submit a sweep (the body of POST /api/v1/sweeps/: name, prompts or prompt_set, axes, job options).

    Prints the sweep's id; with --wait, the paths of the downloaded grids (MP4 and PNG) instead, one per
    line, and exit 1 when a cell did not render. Ctrl-C while waiting leaves the sweep running."""
    body = _read_request(request_file)
    client = _client(ctx)
    created = client.sweep_submit(body)
    sweep_id = str(created["id"])
    if not wait:
        click.echo(sweep_id)
        return
    err.print(
        f"Submitted sweep {sweep_id} ({len(created.get('cells') or [])} cells): {created.get('url')}", markup=False
    )
    final = _follow_sweep(client, sweep_id)
    for path in _download_grids(client, final, Path(out_dir)):
        click.echo(str(path))
    _sweep_finish(final)


def _follow_sweep(client: Client, sweep_id: str) -> dict:
    """Follow a sweep with one bar: its cells as they finish (a running cell counts by its progress), then
    one more step while the grids are composed; returns the final state."""
    bars = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[done]}/{task.fields[cells]} cells"),
        TimeElapsedColumn(),
        console=err,
    )
    task = bars.add_task("rendering", total=None, done=0, cells="?")

    def show(sweep: dict):
        cells = sweep.get("cells") or []
        done = sum(1 for cell in cells if cell.get("status") in FINISHED)
        rendering = sum(float(cell.get("progress") or 0) for cell in cells if cell.get("status") not in FINISHED)
        state = sweep.get("status")
        if _sweep_ended(sweep):
            description, completed = "grids ready" if sweep.get("grids") else state, len(cells) + 1
        elif state in ("composing", "canceled"):
            description, completed = "composing the grids", len(cells)
        else:
            description, completed = "rendering", done + rendering
        bars.update(
            task, description=description, total=len(cells) + 1, completed=completed, done=done, cells=len(cells)
        )

    with bars:
        return _poll(
            lambda: client.sweep(sweep_id), show, ended=_sweep_ended, name=sweep_id, what="sweep", command="wanq sweep"
        )


def _sweep_ended(sweep: dict) -> bool:
    """Whether a sweep is done with. A canceled one is canceled at once, and its grids of the cells that
    rendered are composed after (composing, then canceled again): it has ended once it has them, or when
    no cell rendered, so there is nothing to compose."""
    state = sweep.get("status")
    if state == "canceled":
        return bool(sweep.get("grids")) or not (sweep.get("counts") or {}).get("succeeded")
    return state in FINISHED


def _sweep_finish(sweep: dict):
    """Raise (exit 1) for a sweep that failed or was canceled, or whose cells did not all render."""
    state = sweep.get("status")
    counts = sweep.get("counts") or {}
    if state == "failed":
        error = sweep.get("error") or {}
        raise WanqError(
            error.get("code") or "SWEEP_FAILED", error.get("message") or "The sweep failed.", exit_code=EXIT_JOB_FAILED
        )
    if state == "canceled":
        raise WanqError(
            "CANCELED", "The sweep was canceled; its grids show what had finished.", exit_code=EXIT_JOB_FAILED
        )
    unrendered = [cell for cell in sweep.get("cells") or [] if cell.get("status") in ("failed", "canceled")]
    if state == "succeeded" and unrendered:
        codes = sorted({cell.get("error_code") or cell.get("status", "").upper() for cell in unrendered})
        raise WanqError(
            "SWEEP_INCOMPLETE",
            f"{len(unrendered)} of {len(sweep.get('cells') or [])} cells did not render "
            f"({counts.get('failed', 0)} failed, {counts.get('canceled', 0)} canceled: {', '.join(codes)}); "
            "their tiles are blank.",
            exit_code=EXIT_JOB_FAILED,
        )


def _download_grids(client: Client, sweep: dict, out_dir: Path) -> list[Path]:
    """Every stored grid of the sweep: `<id>_grid_<prompt>_<layer>.mp4` and its contact sheet `.png`."""
    files = []
    for grid in sweep.get("grids") or []:
        stem = f"{str(sweep['id'])[:8]}_grid_{int(grid['prompt_index']):03d}_{int(grid['layer']):02d}"
        files += [(grid["video_url"], f"{stem}.mp4"), (grid["image_url"], f"{stem}.png")]
    return _download_files(client, files, out_dir)


@sweep_group.command("status")
@click.argument("sweep_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Follow it with a progress bar until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's sweep object as JSON.")
@click.pass_context
def sweep_status(ctx, sweep_id, wait, as_json):
    """Show a sweep: its grid of cells (rows x columns) with each cell's status, the counts and the grids'
    URLs (with --wait: exit 1 when it failed, was canceled or a cell did not render)."""
    client = _client(ctx)
    body = _follow_sweep(client, sweep_id) if wait else client.sweep(sweep_id)
    _show(body, as_json=as_json, table=_print_sweep)
    if wait:
        _sweep_finish(body)
        err.print(f"Download its grids with `wanq sweep download {sweep_id}`", markup=False)


def _print_sweep(sweep: dict):
    counts = sweep.get("counts") or {}
    for key, value in (
        ("sweep", sweep.get("id")),
        ("name", sweep.get("name")),
        ("status", sweep.get("status")),
        ("cells", ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "none"),
        ("page", sweep.get("url")),
    ):
        click.echo(f"{key:<10}{value}")
    if sweep.get("error"):
        click.echo(f"{'error':<10}{sweep['error'].get('code')}: {sweep['error'].get('message')}")
    axes = sweep.get("axes") or []
    if not axes:
        return
    rows, columns = axes[0], axes[1] if len(axes) > 1 else None
    layers = axes[2]["labels"] if len(axes) > 2 else [None]
    cells = {(cell.get("row"), cell.get("column"), cell.get("layer")): cell for cell in sweep.get("cells") or []}
    for layer, layer_label in enumerate(layers):
        title = f"{axes[2]['field']} {layer_label}" if layer_label is not None else None
        corner = f"{rows['field']} \\ {columns['field']}" if columns else rows["field"]
        table = Table(escape(corner), box=None, title=escape(title) if title else None, title_justify="left")
        for label in columns["labels"] if columns else ["status"]:
            table.add_column(escape(str(label)))
        for row, row_label in enumerate(rows["labels"]):
            shown = [
                _cell_text(cells.get((row, column, layer)))
                for column in range(len(columns["labels"]) if columns else 1)
            ]
            table.add_row(escape(str(row_label)), *map(escape, shown))
        out.print(table)
    for grid in sweep.get("grids") or []:
        label = f"prompt {int(grid['prompt_index']) + 1}"
        if len(axes) > 2 and int(grid["layer"]) < len(layers):
            label += f", {axes[2]['field']} {layers[int(grid['layer'])]}"
        click.echo(f"{'grid':<10}{label}")
        click.echo(f"{'':<10}video {grid.get('video_url')}")
        click.echo(f"{'':<10}image {grid.get('image_url')}")


def _cell_text(cell: dict | None) -> str:
    if cell is None:
        return "-"
    state = str(cell.get("status"))
    if state == "running":
        return f"running {100 * float(cell.get('progress') or 0):.0f}%"
    if state == "failed" and cell.get("error_code"):
        return f"failed {cell['error_code']}"
    return state


@sweep_group.command("cancel")
@click.argument("sweep_id", metavar="ID")
@click.pass_context
def sweep_cancel(ctx, sweep_id):
    """Cancel a sweep's unfinished cells (the grids of what finished are still made)."""
    body = _client(ctx).sweep_cancel(sweep_id)
    canceled = (body.get("counts") or {}).get("canceled", 0)
    click.echo(f"{body.get('id', sweep_id)} {body.get('status')} ({canceled} cells canceled)")


@sweep_group.command("download")
@click.argument("sweep_id", metavar="ID")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.pass_context
def sweep_download(ctx, sweep_id, out_dir):
    """Download a sweep's grids (MP4 and PNG) into --out; prints their paths, one per line."""
    client = _client(ctx)
    body = client.sweep(sweep_id)
    if not body.get("grids"):
        if not _sweep_ended(body):
            raise WanqError(
                "NOT_FINISHED",
                f"Sweep {sweep_id} is {body.get('status')} and has no grids yet; "
                f"follow it with `wanq sweep status {sweep_id} --wait`.",
                exit_code=EXIT_JOB_FAILED,
            )
        _sweep_finish(body)
    for path in _download_grids(client, body, Path(out_dir)):
        click.echo(str(path))


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
        err.print(f"Stopped waiting; {exc.what} keeps running.\n{exc.hint}", markup=False)
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
