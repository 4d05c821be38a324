"""Admin API in one process: reload, load / unload, pin the default; decisions persist
in the state file so a new worker (a fresh app) applies them before its first load."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from .conftest import ADMIN_TOKEN, make_app
from .helpers import svc_factory

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
ROW = svc_factory.tabular_samples(2, seed=5).tolist()


def _admin(repo):
    svc_factory.publish(repo, "tabular", seed=11)  # fraud v2
    svc_factory.publish(repo, "tabular", seed=12)  # fraud v3
    app = make_app(repo, admin_token=ADMIN_TOKEN, max_versions=2, log_level="warning")
    return app, app.test_client(), repo


@pytest.fixture()
def admin(scratch_repo):
    return _admin(scratch_repo)


@pytest.fixture(scope="module")
def admin_shared(repo, tmp_path_factory):
    """For requests that must not change anything."""
    dest = tmp_path_factory.mktemp("admin-shared") / "models"
    shutil.copytree(repo, dest)
    return _admin(dest)


def served(client, name="fraud"):
    r = client.post(f"/models/{name}/predict", json={"instances": ROW})
    return r.json.get("version") if r.status_code == 200 else r.status_code


def version_status(client, v):
    r = client.get(f"/models/fraud/versions/{v}")
    return r.json["status"]


def test_pin_unload_load_and_clear(admin):
    app, client, repo = admin
    assert served(client) == 3 and version_status(client, 1) == "skipped"
    # pin the default to 2: unversioned requests get 2, readiness follows the pin
    r = client.put("/admin/models/fraud/default", json={"version": 2}, headers=AUTH)
    assert r.status_code == 200 and r.json["models"]["fraud"]["default_version"] == 2
    assert served(client) == 2 and client.get("/readyz").status_code == 200
    # unloading the pinned default is refused
    r = client.post("/admin/models/fraud/versions/2/unload", headers=AUTH)
    assert r.status_code == 409 and "pinned default" in r.json["error"]
    # load version 1, outside the 2 newest (LAYERSCOPE_MAX_VERSIONS)
    r = client.post("/admin/models/fraud/versions/1/load", headers=AUTH)
    assert r.status_code == 200 and version_status(client, 1) == "ready"
    assert (
        client.post("/models/fraud/versions/1/predict", json={"instances": ROW}).status_code == 200
    )
    # unload version 3 everywhere: versioned requests 404, it stays on disk
    r = client.post("/admin/models/fraud/versions/3/unload", headers=AUTH)
    assert r.status_code == 200
    r = client.post("/models/fraud/versions/3/predict", json={"instances": ROW})
    assert r.status_code == 404 and "unloaded through the admin API" in r.json["error"]
    assert (repo / "fraud" / "3" / "model.keras").is_file()
    # pinning an unloaded version is a conflict; clearing the pin serves the newest loaded
    r = client.put("/admin/models/fraud/default", json={"version": 3}, headers=AUTH)
    assert r.status_code == 409
    assert client.delete("/admin/models/fraud/default", headers=AUTH).status_code == 200
    assert served(client) == 2
    # a new worker (fresh app on the same repository) applies the same decisions at start
    fresh = make_app(repo, admin_token=ADMIN_TOKEN, max_versions=2).test_client()
    assert served(fresh) == 2 and version_status(fresh, 3) == "skipped"
    assert version_status(fresh, 1) == "ready"
    state = json.loads((repo / ".admin-state.json").read_text())
    assert state["models"]["fraud"] == {"default": None, "unloaded": [3], "loaded": [1]}
    # back to the default policy
    assert client.post("/admin/models/fraud/versions/3/load", headers=AUTH).status_code == 200
    assert served(client) == 3


def test_reload_picks_up_a_new_version_without_polling(admin):
    app, client, repo = admin
    assert served(client) == 3
    svc_factory.publish(repo, "tabular", seed=13)  # v4; poll_interval is 0
    assert served(client) == 3
    r = client.post("/admin/reload", headers=AUTH)
    assert r.status_code == 200
    assert [v["version"] for v in r.json["models"]["fraud"]["versions"]] == [1, 2, 3, 4]
    assert served(client) == 4


def test_load_retries_a_failed_version(admin):
    app, client, repo = admin
    good = (repo / "fraud" / "3" / "model.keras").read_bytes()
    svc_factory.publish_corrupt(repo, repo / "fraud" / "3")  # v4, checksum mismatch
    client.post("/admin/reload", headers=AUTH)
    assert version_status(client, 4) == "failed" and served(client) == 3
    r = client.post("/admin/models/fraud/versions/4/load", headers=AUTH)
    assert r.status_code == 409 and "checksum" in r.json["error"]
    # the file is repaired in place with identical size and mtime: only an explicit load
    # (a retry) notices, since the signature did not change
    path = repo / "fraud" / "4" / "model.keras"
    st = path.stat()
    path.write_bytes(good)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    client.post("/admin/reload", headers=AUTH)
    assert version_status(client, 4) == "ready" and served(client) == 4


@pytest.mark.parametrize(
    "method,url,body,code",
    [
        ("post", "/admin/models/nope/versions/1/load", None, 404),
        ("post", "/admin/models/fraud/versions/9/unload", None, 404),
        ("post", "/admin/models/..%2f..%2fetc/versions/1/load", None, 404),
        ("post", "/admin/models/fraud/versions/0/load", None, 404),
        ("put", "/admin/models/fraud/default", {"version": "2"}, 400),
        ("put", "/admin/models/fraud/default", {"version": True}, 400),
        ("put", "/admin/models/fraud/default", {"v": 2}, 400),
        ("put", "/admin/models/fraud/default", {"version": 99}, 404),
        ("get", "/admin/reload", None, 405),
    ],
)
def test_bad_admin_requests(admin_shared, method, url, body, code):
    _, client, _ = admin_shared
    kwargs = {"headers": AUTH} if body is None else {"headers": AUTH, "json": body}
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == code and set(r.json) == {"error"}, r.json


def test_readonly_state_file_is_a_json_503(admin_shared):
    _, _, repo = admin_shared
    app = make_app(repo, admin_token=ADMIN_TOKEN, admin_state_file="/proc/no/such/state.json")
    r = app.test_client().post("/admin/reload", headers=AUTH)
    assert r.status_code == 503 and "LAYERSCOPE_ADMIN_STATE_FILE" in r.json["error"]
