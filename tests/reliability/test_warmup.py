"""A worker still loading its models holds model requests instead of answering 503,
while its probes answer at once."""

from __future__ import annotations

from .conftest import make_app
from .helpers import svc_factory


def test_requests_wait_for_the_initial_load(repo):
    app = make_app(repo, load_in_background=True, log_level="warning")
    client = app.test_client()
    repository = app.extensions["layerscope"].repository
    ready = client.get("/readyz")  # probes never wait (a load takes about a second)
    assert ready.status_code == 503 and not repository.initial_load_done.is_set()
    r = client.post(
        "/models/fraud/predict", json={"instances": svc_factory.tabular_samples(1).tolist()}
    )
    assert r.status_code == 200, r.json
    assert repository.initial_load_done.is_set()
