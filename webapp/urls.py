from django.contrib import admin
from django.contrib.auth.views import LoginView, LogoutView
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.authtoken.views import obtain_auth_token
from rest_framework.routers import DefaultRouter

from webapp.jobs import compat
from webapp.jobs.api import JobViewSet, OutputFileView
from webapp.jobs.views import job_new_page, job_page, queue_page
from webapp.loras.api import LoraViewSet
from webapp.loras.views import lora_list_page
from webapp.prompts.api import PromptSetViewSet
from webapp.prompts.views import prompt_set_list_page

router = DefaultRouter()
router.register("loras", LoraViewSet)
router.register("prompt-sets", PromptSetViewSet)
router.register("jobs", JobViewSet)

urlpatterns = [
    path("", queue_page, name="queue"),
    path("jobs/new/", job_new_page, name="job-new"),
    path("jobs/<uuid:pk>/", job_page, name="job-detail"),
    path("loras/", lora_list_page, name="lora-list"),
    path("prompt-sets/", prompt_set_list_page, name="prompt-set-list"),
    path("accounts/login/", LoginView.as_view(template_name="login.html"), name="login"),
    path("accounts/logout/", LogoutView.as_view(next_page="login"), name="logout"),
    path("admin/", admin.site.urls),
    path("health", compat.HealthView.as_view(), name="health"),
    path("v1/inference", compat.InferenceView.as_view(), name="v1-inference"),
    path("v1/requests/<str:request_id>/status", compat.RequestStatusView.as_view(), name="v1-status"),
    path("v1/requests/<str:request_id>/result", compat.RequestResultView.as_view(), name="v1-result"),
    path("v1/requests/<str:request_id>/cancel", compat.RequestCancelView.as_view(), name="v1-cancel"),
    path("v1/models", compat.ModelsView.as_view(), name="v1-models"),
    path("api/v1/", include(router.urls)),
    re_path(r"^api/v1/outputs/(?P<pk>\d+)/(?P<kind>video|poster|webp)$", OutputFileView.as_view(), name="output-file"),
    path("api/v1/auth/token", obtain_auth_token, name="auth-token"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]

handler404 = "webapp.core.errors.handler404"
handler500 = "webapp.core.errors.handler500"
