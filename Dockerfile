# syntax=docker/dockerfile:1
# Two images from one file:
#   docker build --target api    -t saft-api .     # FastAPI + classify on CPU (CPU-only torch)
#   docker build --target worker -t saft-worker .  # Celery worker; torch from PyPI bundles CUDA
# Both run from /app (an editable install), so `saft migrate` finds alembic.ini and migrations/.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SAFT_DATA_DIR=/data
RUN useradd --create-home --uid 1000 saft \
 && mkdir -p /data /app /home/saft/.cache/saft-models \
 && chown -R saft:saft /data /home/saft/.cache
WORKDIR /app
# The project's dependencies, read from pyproject.toml, in their own layer (rebuilt only when it changes).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /tmp/requirements.txt

FROM base AS deps-cpu
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch<=2.14.1" "torchvision<=0.29.1" \
 && pip install -r /tmp/requirements.txt

FROM base AS deps-gpu
RUN pip install -r /tmp/requirements.txt

FROM deps-cpu AS api
COPY . .
RUN pip install --no-deps -e .
USER saft
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["saft", "api", "--host", "0.0.0.0", "--port", "8000"]

FROM deps-gpu AS worker
COPY . .
RUN pip install --no-deps -e .
USER saft
# One worker per GPU: concurrency 1, the job runs in the pool's child process (the first to touch CUDA).
CMD ["saft", "worker"]
