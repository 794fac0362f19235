"""Pages of the LoRA library (/loras/)."""
from django.contrib.auth.decorators import login_required
from django.shortcuts import render


@login_required
def lora_list_page(request):
    return render(request, "pages/placeholder.html", {"nav": "loras", "title": "LoRAs"})
