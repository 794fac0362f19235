from django.apps import AppConfig


class LorasConfig(AppConfig):
    name = "webapp.loras"
    verbose_name = "LoRAs"
