# syntax=docker/dockerfile:1
# Layerscope: Gunicorn + Flask model server. Models come from a volume at /app/models
# (docker-compose.yml trains the missing default models into it first).

# ---- build: a virtual environment with exactly the pins of pyproject.toml ------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml ./
COPY scripts/requirements.py scripts/
RUN python -m venv /opt/venv \
 && python scripts/requirements.py > requirements.txt \
 && /opt/venv/bin/pip install -r requirements.txt

# ---- runtime: slim base, the venv, the code, a non-root user -------------------------
FROM python:3.11-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    CUDA_VISIBLE_DEVICES= \
    LAYERSCOPE_HOST=0.0.0.0 \
    LAYERSCOPE_PORT=8000 \
    LAYERSCOPE_MODEL_REPOSITORY=/app/models \
    LAYERSCOPE_CACHE_DIR=/var/cache/layerscope \
    PROMETHEUS_MULTIPROC_DIR=/tmp/layerscope-metrics
RUN groupadd --system --gid 10001 layerscope \
 && useradd --system --uid 10001 --gid layerscope --home-dir /app --shell /usr/sbin/nologin layerscope \
 && mkdir -p /app/models /var/cache/layerscope \
 && chown layerscope:layerscope /app/models /var/cache/layerscope
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY pyproject.toml ./
COPY service/ service/
COPY training/ training/
COPY deploy/train-missing.sh deploy/
# Only each model's committed model.yaml (.dockerignore drops published versions); they
# also seed the named volume mounted over /app/models the first time it is created.
COPY --chown=layerscope:layerscope models/ models/
USER layerscope:layerscope
VOLUME ["/app/models"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('LAYERSCOPE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["service/entrypoint.sh"]
