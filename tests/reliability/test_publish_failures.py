"""A training run that fails while publishing (no space left, no permission) leaves no
partial version: nothing a reader (the service's scan) or the next run would pick up."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from service.repository import ModelRepository
from training.publish import existing_versions
from training.train import publish, run_training

from .helpers import ROOT

DATA_DIR = os.environ.get("LAYERSCOPE_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")


@pytest.fixture(scope="module")
def trained():
    """One real training run of models/fraud/model.yaml (1 epoch), not yet published."""
    return run_training(
        ROOT / "models" / "fraud" / "model.yaml",
        data_dir=DATA_DIR,
        overrides={"training": {"epochs": 1}},
        baseline=False,
    )


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.fixture()
def tiny_fs(tmp_path):
    """A 64 KiB tmpfs: a full version (model, reference sample, plots) does not fit."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_no_space_left_leaves_no_partial_version(trained, tiny_fs):
    root = tiny_fs / "fraud"
    with pytest.raises(OSError) as info:
        publish(trained, root)
    assert info.value.errno == errno.ENOSPC or "No space" in str(info.value)
    assert _leftovers(root) == []  # no version folder, no staging folder
    assert existing_versions(root) == []
    assert ModelRepository(tiny_fs).scan() == {}


def test_no_permission_leaves_no_partial_version(trained, tmp_path):
    root = tmp_path / "models" / "fraud"
    first = publish(trained, root)  # a good version 1 exists
    before = {p: p.stat().st_mtime_ns for p in first.rglob("*")}
    root.chmod(0o555)  # read-only models dir; root ignores modes, so drop to nobody
    os.seteuid(65534)
    try:
        with pytest.raises(PermissionError):
            publish(trained, root)
    finally:
        os.seteuid(0)
        root.chmod(0o755)
    assert _leftovers(root) == ["1"]
    assert existing_versions(root) == [1]
    assert {p: p.stat().st_mtime_ns for p in first.rglob("*")} == before
    assert set(ModelRepository(tmp_path / "models").scan()["fraud"]) == {1}


def test_file_size_limit_midway_leaves_no_partial_version(tmp_path):
    """The CLI run in a subprocess whose writes fail part-way (RLIMIT_FSIZE: EFBIG): it
    exits non-zero with the error and leaves no version and no staging folder."""
    models = tmp_path / "models"
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "from training.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            "-c",
            script,
            "train",
            str(ROOT / "models" / "fraud" / "model.yaml"),
            "--models-root",
            str(models),
            "--epochs",
            "1",
        ],
        cwd=ROOT,
        env={**os.environ, "LAYERSCOPE_DATA_DIR": DATA_DIR, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode != 0, done.stdout[-2000:]
    assert "File too large" in done.stderr or "EFBIG" in done.stderr, done.stderr[-3000:]
    assert _leftovers(models / "fraud") == []
