from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from webapp.core.auth import SignInView, TokenSignInView
from webapp.jobs import compat
from webapp.jobs.api import JobViewSet, OutputFileView, webhook_urls
from webapp.jobs.views import (
    cancel_action,
    job_new_page,
    job_page,
    job_status_fragment,
    queue_page,
    rerun_action,
    retry_action,
)
from webapp.loras.api import LoraViewSet
from webapp.loras.views import lora_delete_page, lora_detail_page, lora_list_page, lora_run_upload_page
from webapp.prompts.api import PromptSetViewSet
from webapp.prompts.views import prompt_set_delete_page, prompt_set_list_page, prompt_set_new_page, prompt_set_page
from webapp.sweeps.api import SweepGridFileView, SweepViewSet
from webapp.sweeps.views import (
    sweep_cancel_action,
    sweep_list_page,
    sweep_new_page,
    sweep_page,
    sweep_status_fragment,
)

router = DefaultRouter()
router.register("loras", LoraViewSet, basename="api-lora")  # "lora-list" / "lora-detail" name the pages
router.register("prompt-sets", PromptSetViewSet)
router.register("jobs", JobViewSet)
router.register("sweeps", SweepViewSet, basename="api-sweep")  # "sweep-detail" names the page

urlpatterns = [
    path("", queue_page, name="queue"),
    path("jobs/new/", job_new_page, name="job-new"),
    path("jobs/<uuid:pk>/", job_page, name="job-detail"),
    path("jobs/<uuid:pk>/status/", job_status_fragment, name="job-status"),
    path("jobs/<uuid:pk>/cancel/", cancel_action, name="job-cancel"),
    path("jobs/<uuid:pk>/retry/", retry_action, name="job-retry"),
    path("jobs/<uuid:pk>/rerun/", rerun_action, name="job-rerun"),
    path("loras/", lora_list_page, name="lora-list"),
    path("loras/<int:pk>/", lora_detail_page, name="lora-detail"),
    path("loras/<int:pk>/delete/", lora_delete_page, name="lora-delete"),
    path("loras/runs/", lora_run_upload_page, name="lora-run-upload"),
    path("sweeps/", sweep_list_page, name="sweep-list"),
    path("sweeps/new/", sweep_new_page, name="sweep-new"),
    path("sweeps/<uuid:pk>/", sweep_page, name="sweep-detail"),
    path("sweeps/<uuid:pk>/status/", sweep_status_fragment, name="sweep-status"),
    path("sweeps/<uuid:pk>/cancel/", sweep_cancel_action, name="sweep-cancel"),
    path("prompt-sets/", prompt_set_list_page, name="prompt-set-list"),
    path("prompt-sets/new/", prompt_set_new_page, name="prompt-set-new"),
    path("prompt-sets/<int:pk>/", prompt_set_page, name="prompt-set-detail"),
    path("prompt-sets/<int:pk>/delete/", prompt_set_delete_page, name="prompt-set-delete"),
    path("accounts/login/", SignInView.as_view(), name="login"),
    path("accounts/logout/", LogoutView.as_view(next_page="login"), name="logout"),
    path("admin/", admin.site.urls),
    path("health", compat.HealthView.as_view(), name="health"),
    path("v1/inference", compat.InferenceView.as_view(), name="v1-inference"),
    path("v1/requests/<str:request_id>/status", compat.RequestStatusView.as_view(), name="v1-status"),
    path("v1/requests/<str:request_id>/result", compat.RequestResultView.as_view(), name="v1-result"),
    path("v1/requests/<str:request_id>/cancel", compat.RequestCancelView.as_view(), name="v1-cancel"),
    path("v1/models", compat.ModelsView.as_view(), name="v1-models"),
    path("api/v1/webhooks/", include(webhook_urls)),
    path("api/v1/", include(router.urls)),
    re_path(r"^api/v1/outputs/(?P<pk>\d+)/(?P<kind>video|poster|webp)$", OutputFileView.as_view(), name="output-file"),
    re_path(
        r"^api/v1/sweeps/(?P<pk>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})/grids/(?P<grid_id>\d+)/"
        r"(?P<kind>video|image)$",
        SweepGridFileView.as_view(),
        name="sweep-grid-file",
    ),
    path("api/v1/auth/token", TokenSignInView.as_view(), name="auth-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI and ReDoc from drf-spectacular-sidecar's static files; Swagger UI's start script is served
    # by the same view (?script=), so the pages run under the site's script-src 'self'.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]

handler404 = "webapp.core.errors.handler404"
handler500 = "webapp.core.errors.handler500"
