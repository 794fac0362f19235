from django.apps import AppConfig


class PromptsConfig(AppConfig):
    name = "webapp.prompts"
    verbose_name = "Prompt sets"
