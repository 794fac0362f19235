"""The queue page: the team's recent jobs with live status, progress and players."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from .selectors import job_list


@login_required
def queue_page(request):
    return render(request, "queue.html", {"jobs": job_list()[:50]})


@login_required
def job_new_page(request):
    return render(request, "pages/placeholder.html", {"nav": "submit", "title": "Submit a job"})


@login_required
def job_page(request, pk):
    return render(request, "pages/placeholder.html", {"title": f"Job {pk}"})
