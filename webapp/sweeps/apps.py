from django.apps import AppConfig


class SweepsConfig(AppConfig):
    name = "webapp.sweeps"
    verbose_name = "Sweeps"
