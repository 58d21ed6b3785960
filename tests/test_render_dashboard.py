"""The dashboard renderer's arithmetic, on synthetic scrapes (no matplotlib needed).

The PNG is only as honest as these numbers: rates, the failure ratio and the
latency quantiles must come out as PromQL would compute them.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client import generate_latest

from pgtls_proxy.metrics import Metrics

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "render_dashboard.py"


def _load() -> ModuleType:
    """Import the script by path: scripts/ is not a package."""
    spec = importlib.util.spec_from_file_location("render_dashboard", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


rd = _load()

FIRST = """\
# HELP pgtls_handshakes_total Client TLS handshakes by result.
# TYPE pgtls_handshakes_total counter
pgtls_handshakes_total{result="ok"} 100.0
pgtls_handshakes_total{result="expired"} 10.0
pgtls_handshakes_total{result="unknown_ca"} 0.0
# TYPE pgtls_handshake_duration_seconds histogram
pgtls_handshake_duration_seconds_bucket{le="0.01",negotiation="sslrequest"} 50.0
pgtls_handshake_duration_seconds_bucket{le="0.1",negotiation="sslrequest"} 100.0
pgtls_handshake_duration_seconds_bucket{le="+Inf",negotiation="sslrequest"} 100.0
pgtls_handshake_duration_seconds_count{negotiation="sslrequest"} 100.0
pgtls_handshake_duration_seconds_sum{negotiation="sslrequest"} 2.0
pgtls_handshake_duration_seconds_bucket{le="0.01",negotiation="direct"} 10.0
pgtls_handshake_duration_seconds_bucket{le="0.1",negotiation="direct"} 10.0
pgtls_handshake_duration_seconds_bucket{le="+Inf",negotiation="direct"} 10.0
pgtls_handshake_duration_seconds_count{negotiation="direct"} 10.0
pgtls_handshake_duration_seconds_sum{negotiation="direct"} 0.05
# TYPE pgtls_sessions_active gauge
pgtls_sessions_active{backend="main"} 3.0
pgtls_sessions_active{backend="replica"} 1.0
# TYPE pgtls_bytes_total counter
pgtls_bytes_total{direction="client_to_backend"} 1000.0
pgtls_bytes_total{direction="backend_to_client"} 5000.0
# TYPE pgtls_server_cert_expiry_timestamp_seconds gauge
pgtls_server_cert_expiry_timestamp_seconds 2728000.0
"""

# Ten seconds later: 40 more ok and 10 more expired handshakes (5/s, 20% failed);
# 100 more sslrequest handshakes: 20 under 10 ms, 60 in (10 ms, 100 ms], 20 slower.
SECOND = """\
# TYPE pgtls_handshakes_total counter
pgtls_handshakes_total{result="ok"} 140.0
pgtls_handshakes_total{result="expired"} 20.0
pgtls_handshakes_total{result="unknown_ca"} 0.0
# TYPE pgtls_handshake_duration_seconds histogram
pgtls_handshake_duration_seconds_bucket{le="0.01",negotiation="sslrequest"} 70.0
pgtls_handshake_duration_seconds_bucket{le="0.1",negotiation="sslrequest"} 180.0
pgtls_handshake_duration_seconds_bucket{le="+Inf",negotiation="sslrequest"} 200.0
pgtls_handshake_duration_seconds_count{negotiation="sslrequest"} 200.0
pgtls_handshake_duration_seconds_sum{negotiation="sslrequest"} 9.0
pgtls_handshake_duration_seconds_bucket{le="0.01",negotiation="direct"} 10.0
pgtls_handshake_duration_seconds_bucket{le="0.1",negotiation="direct"} 10.0
pgtls_handshake_duration_seconds_bucket{le="+Inf",negotiation="direct"} 10.0
pgtls_handshake_duration_seconds_count{negotiation="direct"} 10.0
pgtls_handshake_duration_seconds_sum{negotiation="direct"} 0.05
# TYPE pgtls_sessions_active gauge
pgtls_sessions_active{backend="main"} 5.0
pgtls_sessions_active{backend="replica"} 0.0
# TYPE pgtls_bytes_total counter
pgtls_bytes_total{direction="client_to_backend"} 3000.0
pgtls_bytes_total{direction="backend_to_client"} 45000.0
# TYPE pgtls_server_cert_expiry_timestamp_seconds gauge
pgtls_server_cert_expiry_timestamp_seconds 2728000.0
"""

T0 = 1000.0
T1 = 1010.0


@pytest.fixture
def scrapes() -> tuple[Any, Any]:
    return rd.parse_scrape(FIRST, T0), rd.parse_scrape(SECOND, T1)


def test_handshake_rates_by_result(scrapes: tuple[Any, Any]) -> None:
    first, second = scrapes
    rates = rd.rate_by(first, second, "pgtls_handshakes_total", ("result",))
    assert rates == {
        (("result", "ok"),): pytest.approx(4.0),
        (("result", "expired"),): pytest.approx(1.0),
        (("result", "unknown_ca"),): 0.0,
    }
    assert rd.rate_by(first, second, "pgtls_handshakes_total") == {(): pytest.approx(5.0)}


def test_failure_ratio(scrapes: tuple[Any, Any]) -> None:
    first, second = scrapes
    assert rd.failure_ratio(first, second) == pytest.approx(0.2)
    assert rd.failure_ratio(second, rd.parse_scrape(SECOND, T1 + 10)) is None


def test_bytes_per_second_by_direction(scrapes: tuple[Any, Any]) -> None:
    first, second = scrapes
    rates = rd.rate_by(first, second, "pgtls_bytes_total", ("direction",))
    assert rates == {
        (("direction", "client_to_backend"),): pytest.approx(200.0),
        (("direction", "backend_to_client"),): pytest.approx(4000.0),
    }


def test_counter_reset_counts_from_zero(scrapes: tuple[Any, Any]) -> None:
    _, second = scrapes
    restarted = rd.parse_scrape(FIRST.replace("100.0\n", "30.0\n", 1), T1 + 10)
    rates = rd.rate_by(second, restarted, "pgtls_handshakes_total", ("result",))
    assert rates[(("result", "ok"),)] == pytest.approx(3.0)


def test_latency_quantiles_from_bucket_increase(scrapes: tuple[Any, Any]) -> None:
    first, second = scrapes
    # 100 new observations: rank 50 lies 30 into the 60 of (0.01, 0.1].
    assert rd.handshake_quantile(first, second, 0.5) == pytest.approx(0.01 + 0.09 * 30 / 60)
    # Rank 99 is in the +Inf bucket: PromQL answers the highest finite bound.
    assert rd.handshake_quantile(first, second, 0.99) == pytest.approx(0.1)
    # No handshakes in between: no quantile rather than a made-up zero.
    assert rd.handshake_quantile(second, rd.parse_scrape(SECOND, T1 + 10), 0.5) is None


def test_histogram_quantile_matches_promql() -> None:
    buckets = {0.1: 10.0, 0.2: 30.0, math.inf: 40.0}
    assert rd.histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 10: top of first
    assert rd.histogram_quantile(0.1, buckets) == pytest.approx(0.04)  # from 0 to 0.1
    assert rd.histogram_quantile(0.5, buckets) == pytest.approx(0.15)
    assert rd.histogram_quantile(0.9, buckets) == pytest.approx(0.2)
    assert rd.histogram_quantile(0.5, {0.1: 1.0}) is None  # no +Inf bucket


def test_gauges_and_expiry(scrapes: tuple[Any, Any]) -> None:
    first, second = scrapes
    assert rd.gauge_by(second, "pgtls_sessions_active", ("backend",)) == {
        (("backend", "main"),): 5.0,
        (("backend", "replica"),): 0.0,
    }
    assert rd.days_to_server_cert_expiry(first) == pytest.approx((2728000 - T0) / 86400)


def test_compute_panels(scrapes: tuple[Any, Any]) -> None:
    first, second = scrapes
    panels = {p.title: p for p in rd.compute_panels([second, first])}  # any order
    assert list(panels) == [
        "Handshakes by result",
        "Handshake failure ratio",
        "Handshake latency",
        "Active sessions by backend",
        "Bytes relayed by direction",
        "Days to server certificate expiry",
    ]
    assert panels["Handshakes by result"].lines == {
        "expired": [(10.0, pytest.approx(1.0))],
        "ok": [(10.0, pytest.approx(4.0))],
    }
    assert panels["Handshake failure ratio"].lines["failed / all"] == [(10.0, pytest.approx(0.2))]
    assert panels["Active sessions by backend"].lines["main"] == [(0.0, 3.0), (10.0, 5.0)]
    assert panels["Bytes relayed by direction"].lines["backend_to_client"] == [
        (10.0, pytest.approx(4000.0))
    ]
    with pytest.raises(ValueError):
        rd.compute_panels([first])


def test_rate_window_spans_scrapes(scrapes: tuple[Any, Any]) -> None:
    first, second = scrapes
    third = rd.parse_scrape(SECOND, T1 + 10)  # no change in the last interval
    panels = {p.title: p for p in rd.compute_panels([first, second, third], window=2)}
    # At the third scrape the rate spans both intervals: 40 ok handshakes in 20 s.
    ok = dict(panels["Handshakes by result"].lines["ok"])
    assert ok[20.0] == pytest.approx(2.0)
    assert ok[10.0] == pytest.approx(4.0)


def test_parses_the_proxys_own_exposition() -> None:
    metrics = Metrics()
    metrics.declare_backends(["main"])
    metrics.handshake_by_result["ok"].inc(3)
    metrics.handshake_time["direct"].observe(0.004)
    scrape = rd.parse_scrape(generate_latest(metrics.registry).decode(), T0)
    assert scrape.series("pgtls_handshakes_total")[(("result", "ok"),)] == 3.0
    assert scrape.series("pgtls_sessions_active") == {(("backend", "main"),): 0.0}
    buckets = scrape.series("pgtls_handshake_duration_seconds_bucket")
    assert buckets[(("le", "+Inf"), ("negotiation", "direct"))] == 1.0


def test_load_files_uses_timestamps_or_mtime(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(FIRST)
    b.write_text(SECOND)
    loaded = rd.load_files([a, b], [T0, T1])
    assert [s.timestamp for s in loaded] == [T0, T1]
    os.utime(a, (T0, T0))
    os.utime(b, (T1, T1))
    assert [s.timestamp for s in rd.load_files([a, b], None)] == [T0, T1]
    with pytest.raises(ValueError):
        rd.load_files([a, b], [T0])


def test_expiry_stat_colours() -> None:
    thresholds = ((14.0, "red"), (30.0, "orange"))
    assert rd.stat_color(-1.0, thresholds) == "red"
    assert rd.stat_color(13.9, thresholds) == "red"
    assert rd.stat_color(14.0, thresholds) == "orange"
    assert rd.stat_color(30.0, thresholds) == "tab:green"


def test_missing_matplotlib_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_matplotlib() -> None:
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(rd, "load_pyplot", no_matplotlib)
    scrape = tmp_path / "a.txt"
    scrape.write_text(FIRST)
    assert rd.main(["--from-files", str(scrape), str(scrape), "--timestamps", "1", "2"]) == 2
    assert "matplotlib is not installed" in capsys.readouterr().err
