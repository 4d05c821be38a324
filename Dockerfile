# Layerscope images, from one Dockerfile:
#   serving (the default, last stage)  Gunicorn + Flask model server: the service's
#                                      dependencies and tensorflow-cpu, no training stack
#   training                           the same dependency layers plus scikit-learn,
#                                      pandas and matplotlib; runs train-missing.sh
# (The classic builder builds every stage before the target: building `serving` builds
# `training` too, from the same cache. BuildKit builds only what the target needs.)
# Models come from a volume at /app/models (docker-compose.yml trains the missing default
# models into it first); the images hold no model versions, data sets or tests.
#
#   docker build -t layerscope:latest .
#   docker build --target training -t layerscope-trainer:latest .
#   docker build --build-arg BASE_IMAGE=layerscope-base:bookworm ...   # a local base
#                (deploy/docker/base-image.sh, where Docker Hub cannot be reached)
# Nothing here needs a network beyond the package registries (PyPI; where the build
# cannot reach them by itself, `docker build --network host`). No `# syntax=` line: it
# would make BuildKit pull a frontend image; the classic builder builds this as well.
ARG BASE_IMAGE=python:3.11-slim

# ---- base: the Python image, plain settings -----------------------------------------
FROM ${BASE_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ---- requirements: the pinned sets, from pyproject.toml ---------------------------------
# Only the generated lists reach the later stages, so an edit of pyproject.toml that
# changes no pin (tool settings, test tools) keeps the cached venv layers.
FROM base AS requirements
COPY pyproject.toml /requirements/
COPY scripts/requirements.py /requirements/scripts/
RUN cd /requirements \
 && python scripts/requirements.py --serving > serving.txt \
 && python scripts/requirements.py --serving --no-deps-set > serving-no-deps.txt \
 && python scripts/requirements.py --serving --extra train | grep -vxFf serving.txt > training.txt

# ---- deps: the serving venv, a non-root user with writable cache dirs ----------------
FROM base AS deps
ENV PATH=/opt/venv/bin:$PATH \
    TF_CPP_MIN_LOG_LEVEL=2 \
    CUDA_VISIBLE_DEVICES= \
    HOME=/home/layerscope \
    XDG_CACHE_HOME=/home/layerscope/.cache \
    MPLCONFIGDIR=/home/layerscope/.config/matplotlib \
    KERAS_HOME=/home/layerscope/.keras \
    LAYERSCOPE_HOST=0.0.0.0 \
    LAYERSCOPE_PORT=8000 \
    LAYERSCOPE_MODEL_REPOSITORY=/app/models \
    LAYERSCOPE_CACHE_DIR=/var/cache/layerscope \
    PROMETHEUS_MULTIPROC_DIR=/tmp/layerscope-metrics
RUN groupadd --system --gid 10001 layerscope \
 && useradd --system --uid 10001 --gid layerscope --home-dir /home/layerscope \
      --create-home --shell /usr/sbin/nologin layerscope \
 && mkdir -p /app/models /var/cache/layerscope "$XDG_CACHE_HOME" "$MPLCONFIGDIR" "$KERAS_HOME" \
 && chown -R layerscope:layerscope /app/models /var/cache/layerscope /home/layerscope
# The serving set of pins (tensorflow-serving-api without its requirement `tensorflow`:
# tensorflow-cpu stands for it), then what a server never reads, so the image stays at half the
# size of a full install: TensorFlow's C++ headers (tensorflow/include, for building
# custom ops); libclang (a dependency of TensorFlow's own op-generation tooling, nothing
# imports it); the test suites numpy, scipy and scikit-learn ship; pip (nothing is
# installed at run time; the training stage brings it back); and the symbol tables and
# debug sections of the shared libraries (~200 MB of libtensorflow_cc, 24 of ml_dtypes'),
# which the dynamic linker does not use: it reads .dynsym, which strip --strip-unneeded
# keeps (binutils is there for this step only). Libraries auditwheel repaired with
# patchelf (an RPATH into a <package>.libs folder, and the .libs folders themselves) are
# left alone: such files do not survive strip.
COPY --from=requirements /requirements/serving.txt /requirements/serving-no-deps.txt \
     /opt/requirements/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends binutils \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -r /opt/requirements/serving.txt \
 && /opt/venv/bin/pip install --no-deps -r /opt/requirements/serving-no-deps.txt \
 && /opt/venv/bin/pip uninstall -y libclang \
 && site=$(echo /opt/venv/lib/python3*/site-packages) \
 && rm -rf "$site/tensorflow/include" \
 && find "$site" -name '*.so*' -type f -not -path '*.libs/*' | while read -r lib; do \
      readelf -d "$lib" 2>/dev/null | grep -q 'R[UN]*PATH.*\.libs' \
        || strip --strip-unneeded "$lib" 2>/dev/null || true; \
    done \
 && for pkg in numpy scipy sklearn; do \
      [ ! -d "$site/$pkg" ] || find "$site/$pkg" -type d -name tests -prune -exec rm -rf {} +; \
    done \
 && /opt/venv/bin/python -m pip uninstall -y pip \
 && DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove binutils \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log

# ---- training: + the training stack; trains the default models a repository lacks -----
FROM deps AS training
# pip again (ensurepip), then the training stack on top of the serving pins (constraints:
# nothing installed already moves), without the test suites pandas and matplotlib ship.
COPY --from=requirements /requirements/training.txt /opt/requirements/
RUN python -m ensurepip \
 && python -m pip install -r /opt/requirements/training.txt -c /opt/requirements/serving.txt \
 && site=$(echo /opt/venv/lib/python3*/site-packages) \
 && for pkg in pandas matplotlib; do \
      [ ! -d "$site/$pkg" ] || find "$site/$pkg" -type d -name tests -prune -exec rm -rf {} +; \
    done
WORKDIR /app
COPY pyproject.toml ./
COPY service/ service/
COPY training/ training/
COPY deploy/train-missing.sh deploy/
# Only each model's committed model.yaml (.dockerignore drops published versions); they
# also seed the named volume mounted over /app/models the first time it is created.
COPY --chown=layerscope:layerscope models/ models/
VOLUME ["/app/models"]
USER layerscope:layerscope
# A one-shot job: nothing to probe while it trains.
HEALTHCHECK NONE
ENTRYPOINT ["deploy/train-missing.sh"]
CMD ["fraud", "fashion", "mnist"]

# ---- serving (default target): Gunicorn on :8000 -------------------------------------
FROM deps AS serving
WORKDIR /app
COPY pyproject.toml ./
COPY service/ service/
# training/: the service imports training.publish (checksums) from it.
COPY training/ training/
# Only each model's committed model.yaml (.dockerignore drops published versions); they
# also seed the named volume mounted over /app/models the first time it is created.
COPY --chown=layerscope:layerscope models/ models/
VOLUME ["/app/models"]
USER layerscope:layerscope
# HTTP, and gRPC (LAYERSCOPE_GRPC_PORT, 0 = off)
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('LAYERSCOPE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["service/entrypoint.sh"]
