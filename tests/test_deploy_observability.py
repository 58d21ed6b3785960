"""The shipped alert rules and Grafana dashboard stay valid and match the metrics.

Dashboards and alerts fail silently: a renamed metric or a typo in PromQL gives
an empty panel or an alert that can never fire. So the rules go through
promtool (syntax and unit tests), and every metric name they or the dashboard
use must be one ``Metrics`` actually exports.

Without promtool these tests skip, except under CI (``CI`` set), where a
missing promtool is an environment bug and must fail loudly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgtls_proxy.metrics import MULTIPROC_ENV, Metrics

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "pgtls-proxy.json"

REQUIRED_ALERTS = {
    "PgtlsServerCertExpiringSoon",
    "PgtlsServerCertExpired",
    "PgtlsCrlStale",
    "PgtlsHandshakeFailureRatioHigh",
    "PgtlsBackendConnectErrors",
    "PgtlsConfigReloadFailed",
    "PgtlsConnectionsRefused",
    "PgtlsAcceptOutOfDescriptors",
}

# Panel title -> panel type.
REQUIRED_PANELS = {
    "Handshakes by result": "timeseries",
    "Handshake failure ratio": "stat",
    "Handshake failure ratio over time": "timeseries",
    "Handshake latency p50 / p90 / p99": "timeseries",
    "Active sessions by backend": "timeseries",
    "Bytes relayed by direction": "timeseries",
    "Backend connect errors by backend": "timeseries",
    "Idle backend sessions kept for reuse": "timeseries",
    "Backend session reuse by result": "timeseries",
    "Days to server certificate expiry": "stat",
    "Hours to CRL next update": "bargauge",
    "Config reloads by result": "stat",
    "Sessions by outcome": "timeseries",
    "Auth denials by reason": "timeseries",
    "Connections refused by reason": "timeseries",
    "Pending connections": "timeseries",
    "Accept errors by error": "timeseries",
}

_PROMTOOL_MISSING = "promtool not found; install the Debian package prometheus"

# Grafana variables, replaced so promtool can parse the dashboard's PromQL.
_GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
    "$instance": ".*",
}

_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not preceded by a digit, dot or "$" and not called as a function.
_IDENT = re.compile(r"(?<![\w$.:])([A-Za-z_:][\w:]*)\b(?!\s*\()")


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels, keywords removed)."""
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPINGS.sub(" ", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _PROMQL_KEYWORDS}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every sample name the proxy's /metrics can show, children or not."""
    saved = os.environ.pop(MULTIPROC_ENV, None)
    try:
        metrics = Metrics()
    finally:
        if saved is not None:
            os.environ[MULTIPROC_ENV] = saved
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    }
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


@pytest.fixture(scope="module")
def alerts() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    groups = {g["name"]: g for g in doc["groups"]}
    assert set(groups) == {"pgtls-proxy"}
    rules = groups["pgtls-proxy"]["rules"]
    return {r["alert"]: r for r in rules}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if "expr" in t]


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None and os.access("/usr/bin/promtool", os.X_OK):
        path = "/usr/bin/promtool"
    if path is not None:
        return path
    if "CI" in os.environ:
        pytest.fail(
            f"{_PROMTOOL_MISSING} (CI is set, so this is an error, not a skip)", pytrace=False
        )
    pytest.skip(_PROMTOOL_MISSING)


def _run_promtool(*args: str, cwd: Path) -> None:
    proc = subprocess.run(
        [_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


# --- promtool -----------------------------------------------------------------


def test_promtool_check_rules() -> None:
    _run_promtool("check", "rules", ALERTS.name, cwd=PROMETHEUS_DIR)


def test_promtool_unit_tests() -> None:
    _run_promtool("test", "rules", ALERTS_TEST.name, cwd=PROMETHEUS_DIR)


def test_dashboard_promql_parses(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each panel query, as recording rules, passes promtool's PromQL parser."""
    rules = []
    for i, expr in enumerate(_exprs(dashboard)):
        for var, value in _GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    _run_promtool("check", "rules", "dashboard.yml", cwd=tmp_path)


# --- metric names ---------------------------------------------------------------


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (le, result) (rate(pgtls_a_bucket{result!~"x|y",job="j"}[5m] offset 1m))'
        " / on (instance) group_left (version) pgtls_b and time() - pgtls_c > 14 * 86400"
        ' or vector(1) unless label_replace(pgtls_d, "l", "$1", "s", "(pgtls_nope)")'
    )
    assert metric_names(expr) == {"pgtls_a_bucket", "pgtls_b", "pgtls_c", "pgtls_d"}


def test_exported_names_include_suffixes(exported: set[str]) -> None:
    """The reference set itself is right, or every other check here is hollow."""
    for name in (
        "pgtls_handshakes_total",
        "pgtls_handshake_duration_seconds_bucket",
        "pgtls_handshake_duration_seconds_count",
        "pgtls_sessions_active",
        "pgtls_crl_next_update_timestamp_seconds",
        "pgtls_server_cert_expiry_timestamp_seconds",
        "pgtls_build_info",
    ):
        assert name in exported
    assert "pgtls_handshakes" not in exported


def test_alert_metrics_are_exported(alerts: dict[str, dict[str, Any]], exported: set[str]) -> None:
    for name, rule in alerts.items():
        used = metric_names(rule["expr"])
        assert used, f"{name}: no metric found in {rule['expr']!r}"
        unknown = used - exported
        assert not unknown, f"{name} uses metrics the proxy does not export: {sorted(unknown)}"


def test_dashboard_metrics_are_exported(dashboard: dict[str, Any], exported: set[str]) -> None:
    exprs = _exprs(dashboard)
    assert exprs
    for expr in exprs:
        used = metric_names(expr)
        assert used, f"no metric found in {expr!r}"
        unknown = used - exported
        assert not unknown, f"dashboard uses metrics the proxy does not export: {sorted(unknown)}"
    variable_queries = [
        v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"
    ]
    for query in variable_queries:
        match = re.search(r"label_values\((\w+),", query)
        assert match, query
        assert match.group(1) in exported


# --- alert rules ----------------------------------------------------------------


def test_alert_rules_are_complete(alerts: dict[str, dict[str, Any]]) -> None:
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert "for" in rule, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert "$labels.instance" in annotations["summary"], name
        assert "$value" in annotations["description"], name


def test_every_alert_has_firing_and_quiet_cases(alerts: dict[str, dict[str, Any]]) -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            name = check["alertname"]
            if expected:
                firing.add(name)
                for alert in expected:
                    assert alert["exp_labels"].get("severity"), name
                    assert set(alert["exp_annotations"]) >= {"summary", "description"}, name
            else:
                quiet.add(name)
    assert set(alerts) - firing == set(), "alerts never shown firing"
    assert set(alerts) - quiet == set(), "alerts never shown quiet"
    assert (firing | quiet) <= set(alerts), "tests for alerts that do not exist"


# --- dashboard ------------------------------------------------------------------


def test_dashboard_has_required_panels(dashboard: dict[str, Any]) -> None:
    panels = {p["title"]: p for p in _panels(dashboard) if p["type"] != "row"}
    for title, kind in REQUIRED_PANELS.items():
        assert title in panels, f"missing panel {title!r}"
        assert panels[title]["type"] == kind, title
        assert panels[title].get("targets"), title

    stacked = panels["Handshakes by result"]["fieldConfig"]["defaults"]["custom"]["stacking"]
    assert stacked["mode"] == "normal"

    latency = [t["expr"] for t in panels["Handshake latency p50 / p90 / p99"]["targets"]]
    for quantile in ("0.5", "0.9", "0.99"):
        assert any(e.startswith(f"histogram_quantile({quantile},") for e in latency), quantile
    assert all("by (le, negotiation)" in e for e in latency)

    steps = panels["Days to server certificate expiry"]["fieldConfig"]["defaults"]["thresholds"]
    assert [(s["color"], s["value"]) for s in steps["steps"]] == [
        ("red", None),
        ("orange", 14),
        ("green", 30),
    ]
    crl = panels["Hours to CRL next update"]["targets"][0]
    assert "by (issuer)" in crl["expr"]
    assert crl["legendFormat"] == "{{issuer}}"

    refused = panels["Connections refused by reason"]["targets"][0]
    assert refused["expr"].startswith("sum by (reason) (rate(pgtls_connections_refused_total")
    assert refused["legendFormat"] == "{{reason}}"
    accept = panels["Accept errors by error"]["targets"][0]
    assert accept["expr"].startswith("sum by (error) (rate(pgtls_accept_errors_total")


def test_dashboard_datasource_and_variables(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    inputs = {i["name"]: i for i in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "${DS_PROMETHEUS}"
    assert variables["instance"]["type"] == "query"
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
