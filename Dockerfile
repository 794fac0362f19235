# One image for web and workers. The torch pin in requirements.txt resolves to
# PyPI's CUDA build on Linux x86_64; the NVIDIA runtime provides the driver.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
WORKDIR /app
# Triton (fast mode's compiled kernels) builds its small launchers with the system C compiler.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
RUN DJANGO_ENV=local python manage.py collectstatic --noinput -v0
EXPOSE 8000
CMD ["gunicorn", "webapp.wsgi", "--bind", "0.0.0.0:8000", "--workers", "4", "--timeout", "600"]
