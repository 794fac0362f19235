"""The jobs pages: the queue with rows that update in place, submitting a job, one job's page, and the
cancel / retry / re-run buttons (plain POST forms; with htmx they swap the job's row)."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from webapp.core.errors import ApiError, NotFound
from webapp.core.permissions import can_manage

from .forms import JobSubmitForm, QueueFilterForm
from .models import GenerationJob
from .selectors import ShownLora, job_etas, job_filter, job_get, job_list, job_loras_shown, job_record_shown
from .serializers import output_urls
from .services import job_cancel, job_rerun, job_retry, job_spec_from_request, job_submit

QUEUE_PAGE_SIZE = 25


@dataclass(frozen=True)
class JobRow:
    """A job as the pages show it, with what the viewer may do to it and when it should finish."""

    job: GenerationJob
    can_manage: bool
    eta: str  # "" for a finished job
    loras: list[ShownLora]  # the stack as the viewer may see it
    error: str = ""  # a refused button press, shown in the row


def job_rows(jobs, *, user) -> list[JobRow]:
    jobs = list(jobs)
    etas = job_etas(jobs=jobs)
    return [
        JobRow(
            job,
            can_manage(user, job),
            "" if job.is_finished else eta_text(etas.get(job.pk)),
            job_loras_shown(job, user=user),
        )
        for job in jobs
    ]


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "ETA unknown"
    minutes = round(seconds / 60)
    if minutes < 1:
        return "ETA < 1 min"
    return f"ETA ~{minutes} min" if minutes < 60 else f"ETA ~{minutes // 60} h {minutes % 60} min"


@login_required
def queue_page(request):
    filters = QueueFilterForm(request.GET, user=request.user)
    # A LoRA the viewer cannot see is no valid choice: like any LoRA filter, it matches nothing then.
    jobs = job_list().none() if "lora" in filters.errors else job_filter(user=request.user, **filters.filters())
    page = Paginator(jobs, QUEUE_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "jobs/queue.html",
        {
            "nav": "queue",
            "filters": filters,
            "page": page,
            "rows": job_rows(page, user=request.user),
            "next": request.get_full_path(),
        },
    )


@login_required
def job_status_fragment(request, pk):
    """What a page polls while a job is active: the queue row's status cell (the whole row once the job
    has finished, for its outputs and buttons), or the job page's status card (`?view=detail`)."""
    row = job_rows([_job_or_404(pk)], user=request.user)[0]
    context = {"row": row, "job": row.job, "next": _next_url(request)}
    if request.GET.get("view") == "detail":
        response = render(request, "jobs/_status_card.html", context)
        if row.job.is_finished:
            response["HX-Refresh"] = "true"  # reload once, for the outputs
        return response
    if not row.job.is_finished:
        return render(request, "jobs/_status_cell.html", context)
    response = render(request, "jobs/_rows.html", {"rows": [row], "next": context["next"]})
    response["HX-Retarget"], response["HX-Reswap"] = f"#job-{pk}", "outerHTML"
    return response


@login_required
def job_new_page(request):
    if request.method != "POST":
        form = JobSubmitForm.prefilled(request.GET, user=request.user)
        return render(request, "jobs/new.html", {"nav": "submit", "form": form})
    form = JobSubmitForm(request.POST, user=request.user)
    if form.is_valid():
        try:
            spec = job_spec_from_request(owner=request.user, data=form.validated_data, request=form.body)
            job = job_submit(owner=request.user, spec=spec)
        except ApiError as exc:
            form.add_api_error(exc)
        else:
            messages.success(request, f"Job {str(job.pk)[:8]} queued.")
            return redirect("job-detail", pk=job.pk)
    return render(request, "jobs/new.html", {"nav": "submit", "form": form}, status=400)


@login_required
def job_page(request, pk):
    job = _job_or_404(pk)
    return render(
        request,
        "jobs/detail.html",
        {
            "job": job,
            "row": job_rows([job], user=request.user)[0],
            "prompts": prompt_outputs(job, user=request.user),
            "steps": sorted({params["sample_steps"] for params in job.prompts}),  # as they ran
            "timings": timing_table(job.timings),
            "next": request.get_full_path(),
        },
    )


def prompt_outputs(job: GenerationJob, *, user) -> list[dict]:
    """Each prompt as it rendered, with its output (once stored): file URLs and reproduction record
    (its LoRAs as `user` may see them)."""
    outputs = {output.index: output for output in job.outputs.all()}
    items = []
    for index, params in enumerate(job.prompts):
        output = outputs.get(index)
        record = job_record_shown(output.record, job=job, user=user) if output else {}
        items.append(
            {
                "params": params,
                "output": output,
                "urls": output_urls(output, None) if output else {},
                "record": record_rows(record) if output else [],
                "record_json": json.dumps(record, indent=2) if output else "",
            }
        )
    return items


def record_rows(record: dict) -> list[tuple[str, str]]:
    """An output's reproduction record as (field, value) lines a person reads."""
    rows = []
    for key, value in record.items():
        if key == "loras":
            value = (
                ", ".join(
                    f"{lora['name']} @ {lora['multiplier']}"
                    + (f" (sha256 {lora['sha256'][:12]}…)" if lora["sha256"] else "")
                    for lora in value
                )
                or "none"
            )
        elif key == "timings":
            value = ", ".join(f"{name} {_seconds(v)}" for name, v in value.items())
        elif isinstance(value, dict):
            value = ", ".join(f"{name} {v}" for name, v in value.items())
        rows.append((key.replace("_", " "), "—" if value in (None, "") else str(value)))
    return rows


def timing_table(timings: dict) -> dict:
    """A finished job's timings: the job-wide ones, and each stage's seconds for every prompt."""
    prompts = timings.get("prompts") or []
    stages = list(dict.fromkeys(name for prompt in prompts for name in prompt))
    return {
        "overall": [(name, _seconds(value)) for name, value in timings.items() if name != "prompts"],
        "prompts": range(1, len(prompts) + 1),
        "stages": [(name.replace("_", " "), [_seconds(prompt.get(name)) for prompt in prompts]) for name in stages],
    }


def _seconds(value) -> str:
    return f"{value:.2f} s" if isinstance(value, int | float) else "—" if value is None else str(value)


@login_required
@require_POST
def cancel_action(request, pk):
    return _act(request, pk, lambda job: job_cancel(job=job, actor=request.user), "canceled")


@login_required
@require_POST
def retry_action(request, pk):
    return _act(request, pk, lambda job: job_retry(job=job, actor=request.user), "queued again")


@login_required
@require_POST
def rerun_action(request, pk):
    return _act(request, pk, lambda job: job_rerun(job=job, owner=request.user), "re-run")


def _act(request, pk, action, done: str):
    """Press a button: back where it was pressed (the queue with its filters, or the job page), or
    with htmx the job's row again (a re-run's new job above it)."""
    job = _job_or_404(pk)
    error, new = "", None
    try:
        result = action(job)
    except ApiError as exc:
        error = f"{exc.code}: {exc.message}"
    else:
        new = result if result.pk != job.pk else None
    next_url = _next_url(request)
    if request.headers.get("HX-Request"):
        jobs = [job_get(job_id=new.pk)] if new else []
        rows = job_rows([*jobs, job_get(job_id=pk)], user=request.user)
        rows[-1] = replace(rows[-1], error=error)
        return render(request, "jobs/_rows.html", {"rows": rows, "next": next_url})
    if error:
        messages.error(request, error)
    elif new:
        messages.success(request, f"Job {str(pk)[:8]} re-run as job {str(new.pk)[:8]}.")
    else:
        messages.success(request, f"Job {str(pk)[:8]} {done}.")
    if new and not next_url:
        return redirect("job-detail", pk=new.pk)
    return redirect(next_url or reverse("job-detail", kwargs={"pk": pk}))


def _next_url(request) -> str:
    """Where a button sends the browser back to: a page of this site, or ""."""
    url = request.POST.get("next") or request.GET.get("next") or ""
    return url if url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()}) else ""


def _job_or_404(pk) -> GenerationJob:
    try:
        return job_get(job_id=pk)
    except NotFound:
        raise Http404("No such job.") from None
