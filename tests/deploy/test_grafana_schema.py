"""Grafana's files checked against Grafana's own schema types, since no Grafana image can
be had here to load them (the compose test runs trainer, service and Prometheus only).

The dashboard goes through ``grafana-foundation-sdk`` (Grafana Labs' types generated from
Grafana's schemas; the pinned release is the one for Grafana 11.1, the stack's image):
decoded into the typed Dashboard with every panel plugin's options and every data
source's query type registered, then encoded again. A key the schema does not know is
dropped on the way, so the round trip must give back the file unchanged; each panel type
must be a known panel plugin and each query a typed Prometheus query against the
provisioned data source. The provisioning files, which are Grafana server configuration
rather than schema types, are checked against the keys Grafana's provisioning reads."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from tests.deploy.project import ROOT

sdk = pytest.importorskip("grafana_foundation_sdk", reason="needs grafana-foundation-sdk")
from grafana_foundation_sdk.cog import plugins  # noqa: E402
from grafana_foundation_sdk.cog import runtime as cog  # noqa: E402
from grafana_foundation_sdk.cog.encoder import JSONEncoder  # noqa: E402
from grafana_foundation_sdk.models import dashboard as dash  # noqa: E402
from grafana_foundation_sdk.models import prometheus  # noqa: E402

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "layerscope.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "layerscope.yml"

plugins.register_default_plugins()


def lost_in_round_trip(original, encoded, path: str = "$") -> list[str]:
    """Keys and values of ``original`` that the typed round trip did not give back."""
    if isinstance(original, dict):
        if not isinstance(encoded, dict):
            return [f"{path}: {type(original).__name__} became {type(encoded).__name__}"]
        out = []
        for key, value in original.items():
            if key not in encoded:
                out.append(f"{path}.{key}: not in the schema")
            else:
                out += lost_in_round_trip(value, encoded[key], f"{path}.{key}")
        return out
    if isinstance(original, list):
        if not isinstance(encoded, list) or len(encoded) != len(original):
            return [f"{path}: list changed"]
        return [m for i, (a, b) in enumerate(zip(original, encoded, strict=True))
                for m in lost_in_round_trip(a, b, f"{path}[{i}]")]
    return [] if original == encoded else [f"{path}: {original!r} became {encoded!r}"]


def schema_problems(data: dict) -> list[str]:
    board = dash.Dashboard.from_json(copy.deepcopy(data))
    encoded = json.loads(JSONEncoder().encode(board))
    problems = lost_in_round_trip(data, encoded)
    panels = [p for p in board.panels or [] if isinstance(p, dash.Panel)]
    for panel in panels:
        where = f"panel {panel.id_val} ({panel.title!r})"
        if cog.panelcfg_config(panel.type_val) is None:
            problems.append(f"{where}: no panel plugin {panel.type_val!r}")
        elif isinstance(panel.options, dict):
            problems.append(f"{where}: options not typed for {panel.type_val!r}")
        for target in panel.targets or []:
            if not isinstance(target, prometheus.Dataquery):
                problems.append(f"{where}: query {target!r} is no Prometheus query")
    return problems


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_matches_grafanas_schema(dashboard):
    assert schema_problems(dashboard) == []
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 8 and all(p.get("targets") for p in panels)


def test_the_check_catches_what_grafana_would_not_understand(dashboard):
    """Not vacuous: a misspelled key, an unknown panel type, a query for another data
    source type each make it fail."""
    typo = copy.deepcopy(dashboard)
    typo["panels"][1]["gridPoss"] = typo["panels"][1].pop("gridPos")
    assert any("gridPoss: not in the schema" in p for p in schema_problems(typo))
    plugin = copy.deepcopy(dashboard)
    plugin["panels"][1]["type"] = "timeseries-graph"
    assert any("no panel plugin" in p for p in schema_problems(plugin))
    query = copy.deepcopy(dashboard)
    query["panels"][1]["datasource"] = {"type": "loki", "uid": "logs"}
    query["panels"][1]["targets"][0]["datasource"] = {"type": "loki", "uid": "logs"}
    assert any("no Prometheus query" in p for p in schema_problems(query))


def test_dashboard_queries_the_provisioned_data_source(dashboard):
    source = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    refs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                refs.append(node["datasource"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    assert refs
    assert all(ref == {"type": source["type"], "uid": source["uid"]} for ref in refs), refs


# The keys Grafana's file provisioning reads (pkg/services/provisioning: datasources v1
# config, dashboards v1 provider config), as documented in "Provision Grafana".
DATASOURCE_KEYS = {
    "name", "type", "access", "orgId", "uid", "url", "user", "database", "basicAuth",
    "basicAuthUser", "withCredentials", "isDefault", "jsonData", "secureJsonData",
    "version", "editable", "apiVersion",
}
PROVIDER_KEYS = {
    "name", "orgId", "folder", "folderUid", "type", "disableDeletion",
    "updateIntervalSeconds", "allowUiUpdates", "options",
}


def test_provisioning_files_use_only_keys_grafana_reads():
    sources = yaml.safe_load(DATASOURCES.read_text())
    assert sources["apiVersion"] == 1
    for source in sources["datasources"]:
        assert set(source) <= DATASOURCE_KEYS, set(source) - DATASOURCE_KEYS
        assert source["access"] in ("proxy", "direct")
        assert source["type"] == "prometheus"
    providers = yaml.safe_load(PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    for provider in providers["providers"]:
        assert set(provider) <= PROVIDER_KEYS, set(provider) - PROVIDER_KEYS
        assert provider["type"] == "file"
        assert set(provider["options"]) <= {"path", "foldersFromFilesStructure"}
