from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from webapp.loras.runs import lora_run_import_dir


class Command(BaseCommand):
    help = (
        "Import ai-toolkit training runs: DIR is one run folder or a folder of them. Every *.safetensors becomes "
        "a LoRA of its run, at its step, keeping job_name/file as its path; a run's config.yaml gives its "
        "trigger word and a prompt set of its samples. Run again after more training to add the new checkpoints."
    )

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)
        parser.add_argument("--owner", help="username to own the imported LoRAs")

    def handle(self, directory, owner=None, **options):
        if not directory.is_dir():
            raise CommandError(f"{directory} is not a folder")
        user = get_user_model().objects.get(username=owner) if owner else None
        failures = 0
        for run in lora_run_import_dir(directory=directory, owner=user):
            self.stdout.write(f"run {run.run}: {run.summary}")
            for lora in run.added:
                self.stdout.write(f"  registered {lora.relative_path} ({_facts(lora)})")
            for lora in run.updated:
                self.stdout.write(f"  new version {lora.relative_path} (version {lora.version}, {_facts(lora)})")
            if run.prompt_set is not None:
                count = run.prompt_set.items.count()
                self.stdout.write(f"  prompt set {run.prompt_set.name} ({count} prompt{'s' if count != 1 else ''})")
            for note in run.notes:
                self.stdout.write(f"  note: {note}")
            for file, code, message in run.refused:
                failures += 1
                self.stderr.write(f"refused {file}: {code}: {message}")
        if failures:
            raise CommandError(f"{failures} file(s) refused")


def _facts(lora) -> str:
    step = "no step" if lora.training_step is None else f"step {lora.training_step}"
    return f"{step}, rank {lora.rank}, sha256 {lora.sha256[:12]}"
