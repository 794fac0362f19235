"""Pages of the prompt sets (/prompt-sets/)."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def prompt_set_list_page(request):
    return render(request, "pages/placeholder.html", {"nav": "prompt-sets", "title": "Prompt sets"})
