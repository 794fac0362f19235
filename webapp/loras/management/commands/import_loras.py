from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from webapp.loras.services import lora_import_dir


class Command(BaseCommand):
    help = "Register every *.safetensors under an ai-toolkit output folder, keeping job_name/file as its path."

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)
        parser.add_argument("--owner", help="username to own the imported LoRAs")

    def handle(self, directory, owner=None, **options):
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a folder")
        user = get_user_model().objects.get(username=owner) if owner else None
        failures = 0
        for relative, lora, error in lora_import_dir(directory=directory, owner=user):
            if error:
                failures += 1
                self.stderr.write(f"refused {relative}: {error}")
            else:
                self.stdout.write(f"registered {relative} (rank {lora.rank}, sha256 {lora.sha256[:12]})")
        if failures:
            raise CommandError(f"{failures} file(s) refused")
