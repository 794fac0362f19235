# Two images from one file: `web` (Django, gunicorn, migrate; requirements-web.txt, no torch) and
# `worker` (adds the rendering stack of requirements.txt, for the Celery workers and beat).
# The torch pin in requirements.txt resolves to PyPI's CUDA build on Linux x86_64; the NVIDIA runtime
# provides the driver.
FROM python:3.11-slim AS base
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
WORKDIR /app
COPY requirements-web.txt .
RUN pip install -r requirements-web.txt

FROM base AS worker
# Triton (fast mode's compiled kernels) builds its small launchers with the system C compiler.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
CMD ["celery", "-A", "workers.celery_app", "worker", "-Q", "gpu", "--pool", "solo", "--concurrency", "1", \
     "--loglevel", "INFO", "-n", "gpu-%h"]

# Last, so a plain `docker build .` gives the small image.
FROM base AS web
# Collected into the image: compose's VAR_DIR=/data is a volume, which would hide them.
ENV STATIC_ROOT=/app/static
COPY . .
RUN DJANGO_ENV=local python manage.py collectstatic --noinput -v0
EXPOSE 8000
CMD ["gunicorn", "webapp.wsgi", "--bind", "0.0.0.0:8000", "--workers", "4", "--timeout", "600"]
