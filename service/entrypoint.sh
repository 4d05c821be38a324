#!/bin/sh
# Start Layerscope under Gunicorn. Used by the README's command and the Dockerfile.
# Settings come from LAYERSCOPE_* environment variables (see service/settings.py).
set -eu
cd "$(dirname "$0")/.."
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
# Prometheus multiprocess mode: per-worker metric files in one directory, emptied of the
# previous run's files before Gunicorn starts (service/metrics.py).
PROMETHEUS_MULTIPROC_DIR="${PROMETHEUS_MULTIPROC_DIR:-${TMPDIR:-/tmp}/layerscope-metrics-${LAYERSCOPE_PORT:-8000}}"
export PROMETHEUS_MULTIPROC_DIR
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
find "$PROMETHEUS_MULTIPROC_DIR" -mindepth 1 -maxdepth 1 -name '*.db' -type f -delete
exec "$PY" -m gunicorn -c service/gunicorn_conf.py service.wsgi:app "$@"
