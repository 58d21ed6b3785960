"""py-spy on pgtls-proxy under the steady workload: a flame graph and a top table.

py-spy samples the supervisor and its workers (``--subprocesses``) and writes
collapsed stacks (``--format raw``); from those this module computes each
function's own time (samples where it is the innermost frame) and total time
(samples where it is on the stack), and draws a flame graph SVG. Idle samples
(a worker parked in epoll) are not recorded, so percentages are of the time
the proxy spent on CPU.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import workloads
from stack import Stack, Target

_PROCESS_FRAME = re.compile(r"^process \d+:")
_THREAD_FRAME = re.compile(r"^thread \(0x[0-9A-Fa-f]+\)")


PROFILE_LOADS = {
    "steady": ["-n", "-S", "-c", "8", "-j", "2"],
    "connect": ["-n", "-S", "-C", "-c", "4", "-j", "2"],
}


def _set_affinity(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:
            pass  # gone already


def find_py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """Stacks outermost-first with their sample counts; process/thread frames dropped."""
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        line = line.rstrip()
        if not line:
            continue
        frames_text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = [
            f
            for f in frames_text.split(";")
            if f and not _PROCESS_FRAME.match(f) and not _THREAD_FRAME.match(f)
        ]
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def category(frame: str) -> str:
    """A coarse bucket for a frame, by the file it is in."""
    if "(trio/" in frame or "/trio/" in frame:
        return "trio"
    if "pgtls_proxy/" in frame:
        return "pgtls_proxy"
    if "ssl.py" in frame or "libssl" in frame or "libcrypto" in frame:
        return "ssl / OpenSSL"
    if "prometheus_client" in frame:
        return "prometheus_client"
    if "socket.py" in frame or "selectors.py" in frame:
        return "stdlib socket"
    if ".py" in frame:
        return "other Python"
    return "native"


# Innermost frames that mean "waiting", not working: trio's epoll_wait, the
# relay engine's epoll_wait, trio's idle worker threads. py-spy's own idle
# detection does not see a blocked epoll_wait as idle on every kernel, so it
# records with --idle and the waiting samples are set aside here.
_WAITING = ("EpollIOManager.get_events ", "RelayEngine._wait ", "WorkerThread._work ")


def waiting(frame: str) -> bool:
    return frame.startswith(_WAITING)


def top_functions(stacks: list[tuple[list[str], int]], limit: int = 15) -> dict[str, Any]:
    everything = sum(count for _, count in stacks)
    stacks = [(frames, count) for frames, count in stacks if not waiting(frames[-1])]
    total = sum(count for _, count in stacks)
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_category: Counter[str] = Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        by_category[category(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
    rows = [
        {
            "function": frame,
            "own_samples": count,
            "own_pct": 100 * count / total if total else 0.0,
            "total_pct": 100 * inclusive[frame] / total if total else 0.0,
        }
        for frame, count in own.most_common(limit)
    ]
    categories = {
        name: 100 * count / total if total else 0.0 for name, count in by_category.most_common()
    }
    return {
        "samples": total,
        "waiting_samples": everything - total,
        "top": rows,
        "own_by_category": categories,
    }


def format_top(summary: dict[str, Any]) -> str:
    per_tx = summary.get("relay_cpu_us_per_tx")
    lines = [
        f"{summary['samples']} samples working ({summary['waiting_samples']} waiting in "
        "epoll or an idle thread, left out); own = innermost frame, total = on the stack",
        "µs/tx: own share x the relay CPU per transaction measured from /proc" if per_tx else "",
        "",
        f"{'own %':>6} {'total %':>8} {'µs/tx':>6}  function",
    ]
    for row in summary["top"]:
        us = f"{row['own_pct'] / 100 * per_tx:6.1f}" if per_tx else "     –"
        lines.append(f"{row['own_pct']:6.1f} {row['total_pct']:8.1f} {us}  {row['function']}")
    lines += ["", "own time by where the innermost frame lives:"]
    for name, pct in summary["own_by_category"].items():
        lines.append(f"{pct:6.1f}  {name}")
    return "\n".join(lines)


# ---------------------------------------------------------------- flame graph


@dataclass
class _Node:
    name: str
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


_COLOURS = {
    "trio": "#e8a87c",
    "pgtls_proxy": "#85c88a",
    "ssl / OpenSSL": "#c38d9e",
    "prometheus_client": "#f6d55c",
    "stdlib socket": "#7fb3d5",
    "other Python": "#d5d8dc",
    "native": "#bb8fce",
}


def flamegraph_svg(stacks: list[tuple[list[str], int]], title: str, width: int = 1400) -> str:
    root = _Node("all")
    for frames, count in stacks:
        node = root
        node.count += count
        for frame in frames:
            node = node.children.setdefault(frame, _Node(frame))
            node.count += count
    total = root.count or 1
    row_h = 17
    depth = 0

    def measure(node: _Node, level: int) -> None:
        nonlocal depth
        depth = max(depth, level)
        for child in node.children.values():
            measure(child, level + 1)

    measure(root, 0)
    top_pad = 40
    height = top_pad + (depth + 1) * row_h + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="monospace" font-size="11">',
        '<rect width="100%" height="100%" fill="#ffffff"/>',
        f'<text x="10" y="20" font-size="14">{html.escape(title)}</text>',
        '<text x="10" y="34" fill="#666">icicle: callers above callees; width = share of '
        "on-CPU samples; hover for counts</text>",
    ]

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.count / total * (width - 20)
        if w < 0.5:
            return
        y = top_pad + level * row_h
        pct = 100 * node.count / total
        label = html.escape(node.name)
        colour = _COLOURS.get(category(node.name), "#dddddd") if level else "#aaaaaa"
        parts.append(
            f"<g><title>{label} — {node.count} samples, {pct:.2f}%</title>"
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 1}" '
            f'fill="{colour}" rx="2"/>'
        )
        chars = int(w / 6.6)
        if chars >= 4:
            text = node.name if len(node.name) <= chars else node.name[: chars - 2] + ".."
            parts.append(f'<text x="{x + 3:.1f}" y="{y + 12}">{html.escape(text)}</text>')
        parts.append("</g>")
        child_x = x
        for child in sorted(node.children.values(), key=lambda n: -n.count):
            draw(child, child_x, level + 1)
            child_x += child.count / total * (width - 20)

    draw(root, 10, 0)
    parts.append("</svg>")
    return "\n".join(parts)


# ---------------------------------------------------------------- the run


def profile_proxy(
    stack: Stack,
    target: Target,
    outdir: Path,
    *,
    secs: int = 10,
    rate: int = 200,
    native: bool = False,
    nonblocking: bool = True,
    pin: bool = True,
    workload: str = "steady",
    log: Any = print,
) -> dict[str, Any]:
    """Record pgtls-proxy for ``secs`` under the steady (or new-connection) pgbench load."""
    py_spy = find_py_spy()
    if py_spy is None:
        raise RuntimeError("py-spy not found: pip install -r bench/requirements.txt")
    assert target.pid is not None
    outdir.mkdir(parents=True, exist_ok=True)
    stem = "profile" if workload == "steady" else f"profile-{workload}"
    raw = outdir / f"{stem}.raw.txt"
    warm = 3
    cpus = sorted(os.sched_getaffinity(0))
    relay_cpus, other_cpus = ({cpus[-1]}, set(cpus[:-1])) if pin and len(cpus) > 1 else (None, None)
    if relay_cpus is not None and other_cpus is not None:
        _set_affinity(workloads.process_tree(target.pid), relay_cpus)
        _set_affinity(workloads.process_tree(stack.postmaster_pid), other_cpus)

    def elsewhere() -> None:
        if other_cpus is not None:
            os.sched_setaffinity(0, other_cpus)

    before = workloads.tree_cpu_split(target.pid)
    load = PROFILE_LOADS[workload]
    bench = subprocess.Popen(
        ["pgbench", *load, "-T", str(secs + warm + 3)],
        env=stack.client_env(target),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=elsewhere,
    )
    time.sleep(warm)
    args = [py_spy, "record", "--pid", str(target.pid), "--subprocesses", "--function"]
    args += ["--rate", str(rate), "--duration", str(secs), "--format", "raw", "-o", str(raw)]
    args.append("--idle")
    if native:
        args.append("--native")
    if nonblocking:
        args.append("--nonblocking")
    try:
        spy = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=secs + 60,
            check=False,
            preexec_fn=elsewhere,
        )
        out, _err = bench.communicate(timeout=secs + 120)
    finally:
        if relay_cpus is not None:
            _set_affinity(workloads.process_tree(target.pid), set(cpus))
            _set_affinity(workloads.process_tree(stack.postmaster_pid), set(cpus))
    after = workloads.tree_cpu_split(target.pid)
    if spy.returncode != 0 or not raw.exists():
        raise RuntimeError(f"py-spy failed ({spy.returncode}): {spy.stderr.strip()[-2000:]}")
    tps = re.search(r"^tps = ([\d.]+)", out, re.M)
    processed = re.search(r"^number of transactions actually processed: (\d+)", out, re.M)
    stacks = read_collapsed(raw)
    summary = top_functions(stacks)
    summary["tps_under_profile"] = float(tps.group(1)) if tps else None
    if processed:
        tx = int(processed.group(1))
        user, system = after[0] - before[0], after[1] - before[1]
        summary["relay_cpu_us_per_tx"] = (user + system) / tx * 1e6
        summary["relay_sys_share"] = system / (user + system) if user + system else 0.0
    summary["pinned"] = (
        None
        if relay_cpus is None
        else {
            "relay": sorted(relay_cpus),
            "postgres_pgbench_py_spy": sorted(other_cpus or ()),
        }
    )
    summary["workload"] = f"pgbench {' '.join(load)}"
    summary["native"] = native
    summary["nonblocking"] = nonblocking
    summary["rate_hz"] = rate
    summary["seconds"] = secs
    text = format_top(summary)
    if summary.get("relay_cpu_us_per_tx") is not None:
        text += (
            f"\n\nunder the profiler ({summary['workload']}): "
            f"{summary['tps_under_profile']:.0f} tps, relay CPU "
            f"{summary['relay_cpu_us_per_tx']:.0f} µs/tx "
            f"({100 * summary['relay_sys_share']:.0f}% in the kernel)"
        )
    if summary["pinned"]:
        text += (
            f"\nrelay pinned to CPU {summary['pinned']['relay']}, PostgreSQL, pgbench and "
            f"py-spy to {summary['pinned']['postgres_pgbench_py_spy']}"
        )
    (outdir / f"{stem}-top.txt").write_text(text + "\n")
    title = f"pgtls-proxy under pgbench {' '.join(load)}, {secs}s at {rate} Hz" + (
        " (with native frames)" if native else ""
    )
    if summary.get("relay_cpu_us_per_tx") is not None:
        title += f"; {summary['tps_under_profile']:.0f} tps"
    working = [(frames, count) for frames, count in stacks if not waiting(frames[-1])]
    (outdir / f"{stem}.svg").write_text(flamegraph_svg(working, title + "; waiting left out"))
    log(text)
    log(f"profile: {raw}, {outdir / (stem + '.svg')}, {outdir / (stem + '-top.txt')}")
    return summary
