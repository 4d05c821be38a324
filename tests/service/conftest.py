"""Fixtures: a session repository with one tabular (``fraud``) and one image
(``fashion``) model, apps built by the real factory, and Flask test clients."""

from __future__ import annotations

import shutil

import pytest
import svc_factory

from service import create_app


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    svc_factory.publish(root, "tabular", seed=1)
    svc_factory.publish(root, "image", seed=2)
    return root


@pytest.fixture(scope="session")
def keras_models(repo):
    """The published models loaded in-process: the reference the service must match."""
    return {
        "fraud": svc_factory.load_keras(repo / "fraud" / "1"),
        "fashion": svc_factory.load_keras(repo / "fashion" / "1"),
    }


@pytest.fixture(scope="session")
def app(repo):
    return create_app(
        {
            "model_repository": repo,
            "poll_interval": 0,
            "load_in_background": False,
            "max_batch_size": 8,
        }
    )


@pytest.fixture()
def client(app):
    return app.test_client()


@pytest.fixture()
def small_app(repo):
    """Tiny limits to test 413 and batch checks cheaply."""
    return create_app(
        {
            "model_repository": repo,
            "poll_interval": 0,
            "load_in_background": False,
            "max_body_bytes": 4096,
            "max_batch_size": 2,
            "max_activation_values": 50,
        }
    )


@pytest.fixture()
def scratch_repo(repo, tmp_path):
    """A private copy of the session repository that a test may modify."""
    dest = tmp_path / "models"
    shutil.copytree(repo, dest)
    return dest
