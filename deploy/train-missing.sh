#!/bin/sh
# One-shot trainer of the docker-compose stack: train every default model that has no
# published version in the repository yet (python -m training train models/<name>).
# Models: the arguments, else $LAYERSCOPE_TRAIN_MODELS, else "fraud fashion mnist".
set -eu
cd "$(dirname "$0")/.."
repo="${LAYERSCOPE_MODEL_REPOSITORY:-models}"
if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
# glibc's malloc hands each large tensor of a training step to mmap and back, so every step
# page-faults its buffers in again; keeping them in the heap makes the image models' epochs
# ~10 % faster on 2 cores (docs/training-defaults.md). Already-set values win.
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-2147483647}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-2147483647}"
if [ "$#" -eq 0 ]; then
    # shellcheck disable=SC2086  # word splitting of the list is intended
    set -- ${LAYERSCOPE_TRAIN_MODELS:-fraud fashion mnist}
fi
for name in "$@"; do
    if ls "$repo/$name"/[0-9]*/metadata.json >/dev/null 2>&1; then
        echo "train-missing: $name already has a version in $repo/$name, skipping"
        continue
    fi
    if [ ! -f "$repo/$name/model.yaml" ]; then
        echo "train-missing: no $repo/$name/model.yaml to train $name from" >&2
        exit 2
    fi
    echo "train-missing: training $name"
    "$PY" -m training train "$repo/$name"
done
