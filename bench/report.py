"""Medians, ratios, the table and the chart, all from the results JSON."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TARGET_ORDER = ("direct", "pgbouncer", "pgtls")
SHORT = {"direct": "direct TLS", "pgbouncer": "PgBouncer", "pgtls": "pgtls-proxy"}


@dataclass(frozen=True)
class Metric:
    key: str
    workload: str
    field: str
    label: str
    unit: str
    kind: str  # "rate": ratio vs direct; "latency": difference vs direct; "cost": no ratio
    fmt: str = "{:.0f}"


METRICS = (
    Metric("steady_tps", "steady", "tps", "steady TPS (-S -c 8)", "tx/s", "rate"),
    Metric("connect_tps", "connect", "tps", "new-connection TPS (-S -C -c 4)", "tx/s", "rate"),
    Metric("copy_mb_s", "copy", "mb_per_s", "bulk COPY out", "MB/s", "rate"),
    Metric("latency_avg_us", "latency", "latency_avg_us", "latency avg (-c 1 -R)", "µs", "latency"),
    Metric("latency_p99_us", "latency", "latency_p99_us", "latency p99 (-c 1 -R)", "µs", "latency"),
    Metric(
        "relay_cpu_us_per_tx",
        "steady",
        "relay_cpu_us_per_tx",
        "relay CPU / steady tx",
        "µs",
        "cost",
    ),
    Metric(
        "relay_wakeups_per_tx",
        "steady",
        "relay_wakeups_per_tx",
        "relay sleeps+wakeups / steady tx",
        "count",
        "cost",
        "{:.2f}",
    ),
    Metric(
        "relay_cpu_us_per_conn",
        "connect",
        "relay_cpu_us_per_conn",
        "relay CPU / new connection",
        "µs",
        "cost",
    ),
    Metric(
        "relay_cpu_ms_per_mb",
        "copy",
        "relay_cpu_ms_per_mb",
        "relay CPU / MB of COPY",
        "ms",
        "cost",
        "{:.2f}",
    ),
    Metric(
        "machine_cpu_us_per_tx",
        "steady",
        "machine_cpu_us_per_tx",
        "machine CPU / steady tx (all processes)",
        "µs",
        "cost",
    ),
    Metric(
        "rss_kib_per_idle_session",
        "idle",
        "rss_kib_per_session",
        "relay RSS / idle mTLS session",
        "KiB",
        "cost",
        "{:.1f}",
    ),
)


def summarise(runs: list[dict[str, Any]], targets: list[str]) -> dict[str, Any]:
    """Median, min, max and count per metric and target, plus ratios of medians."""
    summary: dict[str, Any] = {}
    for metric in METRICS:
        per_target: dict[str, Any] = {}
        for target in targets:
            values = [
                run["result"][metric.field]
                for run in runs
                if run["ok"]
                and run["workload"] == metric.workload
                and run["target"] == target
                and metric.field in run["result"]
            ]
            if values:
                per_target[target] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                    "values": values,
                }
        entry: dict[str, Any] = {
            "label": metric.label,
            "unit": metric.unit,
            "kind": metric.kind,
            "targets": per_target,
        }
        med = {t: v["median"] for t, v in per_target.items()}
        if metric.kind == "rate":
            entry["ratios"] = _ratios(med, lambda a, b: a / b if b else None)
        elif metric.kind == "latency":
            entry["added_vs_direct"] = {
                t: med[t] - med["direct"] for t in med if t != "direct" and "direct" in med
            }
        elif metric.kind == "cost" and "pgtls" in med and "pgbouncer" in med and med["pgbouncer"]:
            entry["ratios"] = {"pgtls/pgbouncer": med["pgtls"] / med["pgbouncer"]}
        summary[metric.key] = entry
    return summary


def _ratios(med: dict[str, float], div: Any) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    if "direct" in med:
        for t in ("pgbouncer", "pgtls"):
            if t in med:
                out[f"{t}/direct"] = div(med[t], med["direct"])
    if "pgtls" in med and "pgbouncer" in med:
        out["pgtls/pgbouncer"] = div(med["pgtls"], med["pgbouncer"])
    return out


def _cell(stats: dict[str, Any] | None, fmt: str) -> str:
    if not stats:
        return "–"
    med = fmt.format(stats["median"])
    if stats["n"] == 1:
        return med
    return f"{med} ({fmt.format(stats['min'])}–{fmt.format(stats['max'])})"


def detail_table(summary: dict[str, Any], targets: list[str]) -> str:
    """Every metric: median (min–max) per target, then ratios or differences."""
    head = ["metric", *(SHORT.get(t, t) for t in targets), "PgBouncer / direct"]
    head += ["pgtls / direct", "pgtls / PgBouncer"]
    rows = [head, ["---"] * len(head)]
    for metric in METRICS:
        entry = summary.get(metric.key)
        if not entry:
            continue
        row = [f"{metric.label}, {metric.unit}"]
        for t in targets:
            row.append(_cell(entry["targets"].get(t), metric.fmt))
        if metric.kind == "rate":
            ratios = entry.get("ratios", {})
            for key in ("pgbouncer/direct", "pgtls/direct", "pgtls/pgbouncer"):
                value = ratios.get(key)
                row.append("–" if value is None else f"{value:.2f}")
        elif metric.kind == "latency":
            added = entry.get("added_vs_direct", {})
            for t in ("pgbouncer", "pgtls"):
                row.append(f"{added[t]:+.0f} µs" if t in added else "–")
            row.append("–")
        else:
            ratio = entry.get("ratios", {}).get("pgtls/pgbouncer")
            row += ["–", "–", "–" if ratio is None else f"{ratio:.2f}"]
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def ratio_table(summary: dict[str, Any], targets: list[str], labels: dict[str, str]) -> str:
    """The issue's shape: one row per target, rates relative to direct TLS."""
    head = [
        "target",
        "steady TPS vs direct TLS",
        "new-connection TPS vs direct TLS",
        "COPY out MB/s vs direct TLS",
        "added latency avg / p99",
        "relay CPU per steady transaction",
    ]
    rows = [head, ["---"] * len(head)]
    for t in targets:
        row = [labels.get(t, t)]
        for key in ("steady_tps", "connect_tps", "copy_mb_s"):
            entry = summary[key]
            if t == "direct":
                row.append("1.00" if "direct" in entry["targets"] else "–")
            else:
                value = entry.get("ratios", {}).get(f"{t}/direct")
                row.append("–" if value is None else f"{value:.2f}")
        if t == "direct":
            row.append("–")
        else:
            avg = summary["latency_avg_us"].get("added_vs_direct", {}).get(t)
            p99 = summary["latency_p99_us"].get("added_vs_direct", {}).get(t)
            row.append("–" if avg is None or p99 is None else f"{avg:+.0f} / {p99:+.0f} µs")
        cpu = summary["relay_cpu_us_per_tx"]["targets"].get(t)
        row.append("–" if cpu is None else f"{cpu['median']:.0f} µs")
        rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def noise_line(data: dict[str, Any]) -> str:
    """One sentence on how much else the machine was doing during the runs."""
    noise = data.get("noise")
    if not noise or noise.get("median_unattributed_cores") is None:
        return ""
    return (
        "CPU outside the benchmark's processes during a run: median "
        f"{noise['median_unattributed_cores']:.2f} cores, "
        f"max {noise['max_unattributed_cores']:.2f}; "
        f"{noise['runs_repeated']} run(s) repeated for it, {noise['noisy_runs_kept']} of "
        f"{noise['runs']} kept above {noise['threshold_cores']} cores."
    )


def render_chart(data: dict[str, Any], path: Path) -> bool:
    """A PNG of the medians with min–max whiskers; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    summary = data["summary"]
    targets = [t for t in TARGET_ORDER if t in data["targets"]]
    colours = {"direct": "#4c72b0", "pgbouncer": "#dd8452", "pgtls": "#55a868"}
    panels = [
        ("steady_tps", "steady TPS (higher is better)"),
        ("connect_tps", "new-connection TPS (higher is better)"),
        ("copy_mb_s", "COPY out MB/s (higher is better)"),
        (("latency_avg_us", "latency_p99_us"), "latency µs, avg and p99 (lower is better)"),
        ("relay_cpu_us_per_tx", "relay CPU µs per steady tx (lower is better)"),
        ("machine_cpu_us_per_tx", "machine CPU µs per steady tx (lower is better)"),
        ("relay_cpu_us_per_conn", "relay CPU µs per new connection (lower is better)"),
        ("rss_kib_per_idle_session", "relay RSS KiB per idle mTLS session (lower is better)"),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(20, 8))
    empty: dict[str, Any] = {"targets": {}, "unit": ""}
    for ax, (keys, title) in zip(axes.flat, panels, strict=True):
        groups = keys if isinstance(keys, tuple) else (keys,)
        width = 0.8 / len(targets)
        for i, t in enumerate(targets):
            xs, meds, lows, highs = [], [], [], []
            for g, key in enumerate(groups):
                stats = summary.get(key, empty)["targets"].get(t)
                if not stats:
                    continue
                xs.append(g + (i - (len(targets) - 1) / 2) * width)
                meds.append(stats["median"])
                lows.append(stats["median"] - stats["min"])
                highs.append(stats["max"] - stats["median"])
            if not xs:
                continue
            bars = ax.bar(
                xs,
                meds,
                width,
                yerr=[lows, highs],
                capsize=3,
                color=colours.get(t),
                label=SHORT.get(t, t),
            )
            ax.bar_label(bars, labels=[f"{m:.0f}" for m in meds], fontsize=8, padding=2)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(
            ["avg", "p99"] if len(groups) > 1 else [summary.get(groups[0], empty)["unit"]],
            fontsize=9,
        )
        ax.margins(y=0.15)
    axes.flat[0].legend(fontsize=9, loc="lower left")
    meta = data["meta"]
    fig.suptitle(
        f"pgtls-proxy benchmark — {meta['date']} — {meta['cpus']} CPUs, "
        f"{data['params']['reps']} rep(s), medians with min–max",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
