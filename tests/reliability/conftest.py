"""Fixtures: a session repository with a tabular (``fraud``) and an image (``fashion``)
model published by the real pipeline helpers, and apps built by the real factory."""

from __future__ import annotations

import shutil

import pytest

from .helpers import svc_factory

ADMIN_TOKEN = "admin-s3cret-token-0123456789"
INTROSPECTION_TOKEN = "peek-t0ken-abcdef"


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel-models")
    svc_factory.publish(root, "tabular", seed=1)
    svc_factory.publish(root, "image", seed=2)
    return root


def make_app(repo, **extra):
    from service import create_app

    config = {
        "model_repository": repo,
        "poll_interval": 0,
        "load_in_background": False,
        "max_batch_size": 8,
        "activation_sample_every": 0,
        **extra,
    }
    return create_app(config)


@pytest.fixture(scope="session")
def app(repo):
    """No tokens: admin API off, introspection open."""
    return make_app(repo)


@pytest.fixture()
def scratch_repo(repo, tmp_path):
    dest = tmp_path / "models"
    shutil.copytree(repo, dest)
    return dest


@pytest.fixture(scope="session")
def secured_app(tmp_path_factory, repo):
    """Admin and introspection tokens set, on a private copy of the repository."""
    dest = tmp_path_factory.mktemp("rel-secured") / "models"
    shutil.copytree(repo, dest)
    return make_app(dest, admin_token=ADMIN_TOKEN, introspection_token=INTROSPECTION_TOKEN)
