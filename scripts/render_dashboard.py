#!/usr/bin/env python3
"""Render the main pgtls-proxy dashboard panels to a PNG from /metrics scrapes.

A picture of the Grafana dashboard without running Prometheus and Grafana: the
script scrapes a running proxy a number of times (or reads scrapes recorded
earlier) and draws handshakes/s by result, the handshake failure ratio, p50/p99
handshake latency, active sessions by backend, bytes/s by direction and days to
server-certificate expiry, computed the way the dashboard's PromQL does.

    scripts/render_dashboard.py --url http://127.0.0.1:9187/metrics \\
        --seconds 30 --interval 1 --save-scrapes /tmp/scrapes -o docs/dashboard.png
    scripts/render_dashboard.py --from-files /tmp/scrapes/*.txt -o docs/dashboard.png

matplotlib is needed only to draw and is not a pgtls-proxy dependency
(``pip install matplotlib``). Parsing and the rate, ratio and quantile
arithmetic below do not need it, so they are unit-tested on their own.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
LabelFilter = Callable[[Mapping[str, str]], bool]

HANDSHAKES = "pgtls_handshakes_total"
HANDSHAKE_BUCKETS = "pgtls_handshake_duration_seconds_bucket"
SESSIONS_ACTIVE = "pgtls_sessions_active"
BYTES = "pgtls_bytes_total"
SERVER_CERT_EXPIRY = "pgtls_server_cert_expiry_timestamp_seconds"
DAY = 86400.0


@dataclass(frozen=True)
class Scrape:
    """One /metrics response: sample values by name and labels, and when it was taken."""

    timestamp: float
    samples: Mapping[str, Mapping[Labels, float]]

    def series(self, name: str) -> Mapping[Labels, float]:
        return self.samples.get(name, {})


def parse_scrape(text: str, timestamp: float) -> Scrape:
    """Parse the Prometheus text format, keyed by sample name (``_total``, ``_bucket``…)."""
    samples: dict[str, dict[Labels, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples[sample.name][labels] = float(sample.value)
    return Scrape(timestamp=timestamp, samples=dict(samples))


def _increase(before: float | None, after: float) -> float:
    """Counter increase, treating a drop as a restart from zero (as PromQL does)."""
    if before is None or after < before:
        return after
    return after - before


def increase_by(
    earlier: Scrape,
    later: Scrape,
    name: str,
    by: Sequence[str] = (),
    where: LabelFilter | None = None,
) -> dict[Labels, float]:
    """``sum by (<by>) (increase(name[...]))`` between two scrapes."""
    old = earlier.series(name)
    out: dict[Labels, float] = defaultdict(float)
    for labels, value in later.series(name).items():
        as_dict = dict(labels)
        if where is not None and not where(as_dict):
            continue
        key = tuple((k, as_dict.get(k, "")) for k in by)
        out[key] += _increase(old.get(labels), value)
    return dict(out)


def rate_by(
    earlier: Scrape,
    later: Scrape,
    name: str,
    by: Sequence[str] = (),
    where: LabelFilter | None = None,
) -> dict[Labels, float]:
    """``sum by (<by>) (rate(name[...]))`` between two scrapes, per second."""
    elapsed = later.timestamp - earlier.timestamp
    if elapsed <= 0:
        raise ValueError(f"scrapes out of order: {earlier.timestamp} then {later.timestamp}")
    return {k: v / elapsed for k, v in increase_by(earlier, later, name, by, where).items()}


def failure_ratio(earlier: Scrape, later: Scrape) -> float | None:
    """Share of handshakes with a result other than ok; None when there were none."""
    total = sum(increase_by(earlier, later, HANDSHAKES).values())
    if total <= 0:
        return None
    failed = sum(
        increase_by(earlier, later, HANDSHAKES, where=lambda lb: lb.get("result") != "ok").values()
    )
    return failed / total


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's histogram_quantile over cumulative bucket counts keyed by upper bound."""
    if not buckets or not 0 <= q <= 1:
        return None
    bounds = sorted(buckets)
    if not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for i, upper in enumerate(bounds):
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                # The tail has no upper bound: report the highest finite one.
                return bounds[i - 1] if i > 0 else None
            if i == 0 and upper <= 0:
                return upper
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return None


def handshake_quantile(earlier: Scrape, later: Scrape, q: float) -> float | None:
    """Handshake duration quantile over the scrapes' interval, all negotiations together."""
    by_le = increase_by(earlier, later, HANDSHAKE_BUCKETS, by=("le",))
    buckets = {float(dict(labels)["le"]): count for labels, count in by_le.items()}
    return histogram_quantile(q, buckets)


def gauge_by(scrape: Scrape, name: str, by: Sequence[str] = ()) -> dict[Labels, float]:
    """``sum by (<by>) (name)`` in one scrape."""
    out: dict[Labels, float] = defaultdict(float)
    for labels, value in scrape.series(name).items():
        as_dict = dict(labels)
        out[tuple((k, as_dict.get(k, "")) for k in by)] += value
    return dict(out)


def days_to_server_cert_expiry(scrape: Scrape) -> float | None:
    """Days from the scrape to the server certificate's notAfter (None before it is set)."""
    values = [v for v in scrape.series(SERVER_CERT_EXPIRY).values() if v > 0]
    if not values:
        return None
    return (min(values) - scrape.timestamp) / DAY


def _label(key: Labels) -> str:
    return ",".join(v for _, v in key) or "total"


@dataclass
class Panel:
    """One chart: named lines of (seconds since the first scrape, value) points."""

    title: str
    unit: str
    lines: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    stacked: bool = False
    # A stat panel shows its last value in the colour of the first bound it is under.
    stat_thresholds: tuple[tuple[float, str], ...] | None = None

    def last(self) -> float | None:
        """The newest value of any line: what a stat panel shows."""
        points = [p for line in self.lines.values() for p in line]
        return max(points)[1] if points else None

    def add(self, line: str, t: float, value: float | None) -> None:
        points = self.lines.setdefault(line, [])
        if value is not None:
            points.append((t, value))


def compute_panels(scrapes: Sequence[Scrape], window: int = 1) -> list[Panel]:
    """The six panels, each rate taken over ``window`` consecutive scrape intervals."""
    if len(scrapes) < 2:
        raise ValueError("need at least two scrapes to compute rates")
    if window < 1:
        raise ValueError("window must be at least 1")
    scrapes = sorted(scrapes, key=lambda s: s.timestamp)
    start = scrapes[0].timestamp
    handshakes = Panel("Handshakes by result", "handshakes/s", stacked=True)
    ratio = Panel("Handshake failure ratio", "ratio")
    latency = Panel("Handshake latency", "seconds")
    active = Panel("Active sessions by backend", "sessions", stacked=True)
    traffic = Panel("Bytes relayed by direction", "bytes/s")
    expiry = Panel(
        "Days to server certificate expiry",
        "days",
        stat_thresholds=((14.0, "tab:red"), (30.0, "tab:orange")),
    )

    for i, later in enumerate(scrapes):
        t = later.timestamp - start
        for key, value in sorted(gauge_by(later, SESSIONS_ACTIVE, ("backend",)).items()):
            active.add(_label(key), t, value)
        expiry.add("server certificate", t, days_to_server_cert_expiry(later))
        if i == 0:
            continue
        earlier = scrapes[max(0, i - window)]
        for key, value in sorted(rate_by(earlier, later, HANDSHAKES, ("result",)).items()):
            handshakes.add(_label(key), t, value)
        ratio.add("failed / all", t, failure_ratio(earlier, later))
        latency.add("p50", t, handshake_quantile(earlier, later, 0.5))
        latency.add("p99", t, handshake_quantile(earlier, later, 0.99))
        for key, value in sorted(rate_by(earlier, later, BYTES, ("direction",)).items()):
            traffic.add(_label(key), t, value)

    # Results that never happened would only crowd the stacked legend; ok goes at the bottom.
    handshakes.lines = {
        k: v
        for k, v in sorted(handshakes.lines.items(), key=lambda kv: (kv[0] != "ok", kv[0]))
        if any(value > 0 for _, value in v)
    }
    return [handshakes, ratio, latency, active, traffic, expiry]


# --- input ---------------------------------------------------------------------


def scrape_url(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode("utf-8")


def collect(
    url: str, seconds: float, interval: float, save_dir: Path | None = None
) -> list[Scrape]:
    """Scrape ``url`` every ``interval`` seconds for ``seconds`` (at least twice)."""
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    count = max(2, int(seconds / interval) + 1)
    scrapes: list[Scrape] = []
    next_at = time.monotonic()
    for n in range(count):
        now = time.time()
        text = scrape_url(url)
        scrapes.append(parse_scrape(text, now))
        if save_dir is not None:
            path = save_dir / f"scrape-{n:05d}.txt"
            path.write_text(text)
            # The mtime carries the scrape time for a later --from-files run.
            os.utime(path, (now, now))
        next_at += interval
        if n + 1 < count:
            time.sleep(max(0.0, next_at - time.monotonic()))
    return scrapes


def load_files(paths: Sequence[Path], timestamps: Sequence[float] | None) -> list[Scrape]:
    """Recorded scrapes, timed by ``timestamps`` or else by each file's mtime."""
    if timestamps is not None and len(timestamps) != len(paths):
        raise ValueError(f"{len(paths)} files but {len(timestamps)} timestamps")
    scrapes = []
    for i, path in enumerate(paths):
        ts = timestamps[i] if timestamps is not None else path.stat().st_mtime
        scrapes.append(parse_scrape(path.read_text(), ts))
    return scrapes


# --- drawing -------------------------------------------------------------------

MATPLOTLIB_MISSING = (
    "render_dashboard: matplotlib is not installed. It is not a pgtls-proxy dependency;\n"
    "install it in this environment (pip install matplotlib) to render the PNG."
)


def load_pyplot() -> Any:
    """Import matplotlib only here, with a headless backend."""
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def stat_color(value: float, thresholds: Sequence[tuple[float, str]]) -> str:
    """Colour of a stat value: that of the first threshold it is under, else green."""
    for bound, color in thresholds:
        if value < bound:
            return color
    return "tab:green"


def _draw_stat(ax: Any, panel: Panel) -> None:
    ax.axis("off")
    value = panel.last()
    if value is None or panel.stat_thresholds is None:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    color = stat_color(value, panel.stat_thresholds)
    ax.text(
        0.5,
        0.55,
        f"{value:.1f}",
        ha="center",
        va="center",
        fontsize=56,
        color=color,
        fontweight="bold",
        transform=ax.transAxes,
    )
    ax.text(
        0.5,
        0.25,
        panel.unit,
        ha="center",
        va="center",
        fontsize=16,
        color=color,
        transform=ax.transAxes,
    )


def render(panels: Iterable[Panel], output: Path, title: str, plt: Any) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), constrained_layout=True)
    fig.suptitle(title)
    for ax, panel in zip(axes.flat, panels, strict=False):
        ax.set_title(panel.title)
        if panel.stat_thresholds is not None:
            _draw_stat(ax, panel)
            continue
        ax.set_xlabel("seconds")
        ax.set_ylabel(panel.unit)
        ax.grid(True, alpha=0.3)
        lines = {k: v for k, v in panel.lines.items() if v}
        if not lines:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
            continue
        if panel.stacked and len(lines) > 1:
            times = sorted({t for points in lines.values() for t, _ in points})
            stacks = [[dict(points).get(t, 0.0) for t in times] for points in lines.values()]
            ax.stackplot(times, stacks, labels=list(lines), alpha=0.8)
        else:
            for name, points in lines.items():
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=name)
        if panel.unit == "ratio":
            ax.axhline(0.2, color="red", linestyle="--", linewidth=1, label="alert threshold")
            ax.set_ylim(0, 1)
        ax.legend(fontsize="small", loc="upper left")
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="a proxy's /metrics URL to scrape")
    source.add_argument("--from-files", nargs="+", type=Path, metavar="FILE", help="scrapes")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to scrape")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument(
        "--timestamps",
        nargs="+",
        type=float,
        help="Unix time of each --from-files scrape (default: each file's mtime)",
    )
    parser.add_argument("--save-scrapes", type=Path, metavar="DIR", help="keep the raw scrapes")
    parser.add_argument("--window", type=int, default=1, help="scrape intervals per rate")
    parser.add_argument("--title", default="pgtls-proxy")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/dashboard.png"))
    args = parser.parse_args(argv)
    if args.timestamps is not None and args.from_files is None:
        parser.error("--timestamps goes with --from-files")
    if args.interval <= 0:
        parser.error("--interval must be positive")

    # Before a 30-second scrape, not after it.
    try:
        plt = load_pyplot()
    except ImportError:
        print(MATPLOTLIB_MISSING, file=sys.stderr)
        return 2

    try:
        if args.url is not None:
            scrapes = collect(args.url, args.seconds, args.interval, args.save_scrapes)
        else:
            scrapes = load_files(args.from_files, args.timestamps)
        panels = compute_panels(scrapes, args.window)
    except (OSError, ValueError) as exc:
        print(f"render_dashboard: {exc}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    render(panels, args.output, args.title, plt)
    print(f"wrote {args.output} from {len(scrapes)} scrapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
