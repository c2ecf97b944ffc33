"""promtool on the shipped Prometheus config and alert rules: syntax, and unit tests that fire
each alert on a synthetic failure and stay silent on healthy series (deploy/prometheus/alerts.test.yml)."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.conftest import DEPLOY, tool

PROM = DEPLOY / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("promtool"), *args], cwd=PROM, capture_output=True, text=True, timeout=120)


def test_config_and_rules_are_valid():
    for args in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml")):
        res = promtool(*args)
        assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 7 rules found" in promtool("check", "rules", "alerts.yml").stdout


def test_rule_unit_tests_pass():
    res = promtool("test", "rules", "alerts.test.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_alert_has_a_runbook_a_severity_and_tests_that_fire_and_stay_silent():
    rules = [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load((PROM / "alerts.test.yml").read_text())["tests"]
    fired, silent = set(), set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    for r in rules:
        assert len(r["annotations"]["runbook"]) > 40, r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["alert"] in fired, f"no test fires {r['alert']}"
        assert r["alert"] in silent, f"no test keeps {r['alert']} silent"


def test_a_broken_expectation_fails_promtool(tmp_path):
    """The unit tests can fail: claiming silence where the replica-down alert fires is refused."""
    broken = yaml.safe_load((PROM / "alerts.test.yml").read_text())
    broken["rule_files"] = [str(PROM / "alerts.yml")]
    for case in broken["tests"]:
        for check in case.get("alert_rule_test", []):
            if check["alertname"] == "StreamerReplicaDown" and check["exp_alerts"]:
                check["exp_alerts"] = []
    path = tmp_path / "broken.test.yml"
    path.write_text(yaml.safe_dump(broken))
    res = subprocess.run([tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "StreamerReplicaDown" in res.stdout + res.stderr
