"""REST resources /api/v1/sweeps/ (create, list, detail, cancel, delete) and the grids' file downloads."""

from django_filters import rest_framework as filters
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle
from rest_framework.views import APIView

from webapp.core.errors import NotFound
from webapp.jobs.api import file_download_schema, stored_file_response, stored_request

from .models import Sweep
from .selectors import sweep_get, sweep_grid_get, sweep_list
from .serializers import SweepCreateSerializer, SweepSerializer
from .services import sweep_cancel, sweep_create, sweep_delete

GRID_CONTENT_TYPES = {"video": "video/mp4", "image": "image/png"}


class SweepFilter(filters.FilterSet):
    class Meta:
        model = Sweep
        fields = ["status", "owner", "model"]


class SweepViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Sweeps: one job per cell of up to three axes (lora, multiplier, seed, prompt), and their grids."""

    serializer_class = SweepSerializer
    filterset_class = SweepFilter
    throttle_scope = "submit"

    def get_queryset(self):
        return sweep_list(user=self.request.user)

    def get_object(self):
        return sweep_get(pk=self.kwargs["pk"], user=self.request.user)

    def get_throttles(self):
        return [ScopedRateThrottle()] if self.action == "create" else []

    def perform_destroy(self, instance):
        sweep_delete(sweep=instance, actor=self.request.user)

    @extend_schema(request=SweepCreateSerializer, responses={201: SweepSerializer})
    def create(self, request):
        """Queue one job per cell; all of them or, on any refusal, none."""
        payload = SweepCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        sweep = sweep_create(owner=request.user, data=payload.validated_data, request=stored_request(payload))
        return self._sweep_response(sweep, status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: SweepSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Cancel every unfinished cell; the grids of what finished are still made."""
        return self._sweep_response(sweep_cancel(sweep=self.get_object(), actor=request.user))

    def _sweep_response(self, sweep, status_code=status.HTTP_200_OK):
        sweep = sweep_get(pk=sweep.pk, user=self.request.user)
        return Response(SweepSerializer(sweep, context={"request": self.request}).data, status=status_code)


class SweepGridFileView(APIView):
    """Download a sweep's grid as MP4 (`video`) or its contact sheet as PNG (`image`)."""

    @file_download_schema(*GRID_CONTENT_TYPES.values())
    def get(self, request, pk, grid_id, kind):
        grid = sweep_grid_get(sweep_id=pk, grid_id=grid_id)
        gone = NotFound("SWEEP_GRID_NOT_FOUND", "This grid's file is gone.")  # recomposed or deleted meanwhile
        return stored_file_response(request, getattr(grid, kind), content_type=GRID_CONTENT_TYPES[kind], gone=gone)
