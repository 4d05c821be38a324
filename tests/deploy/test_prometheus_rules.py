"""promtool on the shipped Prometheus configuration, alert rules and their unit tests."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.deploy.project import ROOT

PROM = ROOT / "deploy" / "prometheus"
pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["promtool", *args], cwd=PROM, capture_output=True, text=True, timeout=120
    )


def test_check_config():
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_check_rules():
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests():
    result = promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_rule_unit_tests_detect_a_broken_rule(tmp_path):
    """The unit tests are not vacuous: with the error-ratio threshold raised they fail."""
    shutil.copy(PROM / "alerts_test.yml", tmp_path / "alerts_test.yml")
    rules = (PROM / "alerts.yml").read_text()
    assert "ratio_rate5m > 0.05" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace("ratio_rate5m > 0.05", "ratio_rate5m > 0.5"))
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "LayerscopeHighErrorRatio" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    import yaml

    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    tested = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == tested
    assert {
        "LayerscopeHighErrorRatio",
        "LayerscopeLatencyObjectiveMissed",
        "LayerscopeModelNotReady",
        "LayerscopeActivationDrift",
    } <= alerts
