"""Session fixtures of the container tests: one Docker engine, one build of each image,
one set of tiny trained default models (tests/deploy/engine.py, tests/deploy/tiny.py)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.deploy import engine as eng


@pytest.fixture(scope="session")
def docker_engine(request):
    eng.set_reporter(eng.terminal_writer(request.config))
    try:
        found = eng.engine()
    except eng.Unavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")
    yield found
    found.close()


@pytest.fixture(scope="session")
def images(docker_engine) -> eng.Images:
    return eng.build_images()


@pytest.fixture(scope="session")
def world_readable_tmp():
    """A temporary folder the containers' uid 10001 can read (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="layerscope-docker-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_models(world_readable_tmp) -> dict[str, Path]:
    """The three default models (committed model.yaml, one epoch on a slice of the real
    data) as version 1 in ``repo/``; fraud once more (another seed) in ``spare/``."""
    from tests.deploy import tiny
    from training.data import DataNotFound

    repo = world_readable_tmp / "repo"
    spare = world_readable_tmp / "spare"
    versions: dict[str, Path] = {}
    try:
        for name in tiny.DEFAULT_MODELS:
            eng.progress(f"training a tiny {name}")
            versions[name] = tiny.train_default(repo, name)
        versions["fraud@2"] = tiny.train_default(spare, "fraud", seed=1)
    except DataNotFound as exc:
        pytest.skip(f"data sets not found ({os.environ.get('LAYERSCOPE_DATA_DIR')}): {exc}")
    for path in [world_readable_tmp, *world_readable_tmp.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return versions
