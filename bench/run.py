"""Benchmark pgtls-proxy against PgBouncer and PostgreSQL's own TLS, side by side.

    .venv/bin/python bench/run.py            # full run, ~7 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # one short repetition, ~2 minutes
    .venv/bin/python bench/run.py --profile  # ... then py-spy on pgtls-proxy
    .venv/bin/python bench/run.py --render docs/benchmarks.json   # tables + chart only

One run builds a throwaway PKI and PostgreSQL, starts PgBouncer and
pgtls-proxy in front of it, and runs every workload against every target,
interleaved: each repetition runs each workload once per target, in an order
that rotates from one repetition to the next. Results go to
bench/results/latest.json (and latest.png); ``--publish`` also copies them to
docs/benchmarks.json and docs/benchmarks.png. docs/benchmarks.md explains
every number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import report  # noqa: E402
import workloads  # noqa: E402
from stack import Stack, StackError, Target, find_pgbouncer, tool_version  # noqa: E402

WORKLOADS = ("steady", "connect", "latency", "copy")
# A run during which more than this many cores were busy outside the
# benchmark's processes is repeated once (while retries last).
NOISE_CORES = 0.25


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 short repetition, 100 MB COPY")
    p.add_argument("--reps", type=int, help="repetitions (default 3, --quick 1)")
    p.add_argument("--steady-secs", type=int, help="pgbench -T for steady (default 12)")
    p.add_argument("--connect-secs", type=int, help="pgbench -T for -C (default 8)")
    p.add_argument("--latency-secs", type=int, help="pgbench -T for latency (default 6)")
    p.add_argument("--latency-rate", type=int, default=500, help="pgbench -R for latency")
    p.add_argument("--copy-mb", type=float, help="size of the COPY table (default 300)")
    p.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    p.add_argument("--workers", type=int, help="pgtls-proxy workers (default: its own, CPUs)")
    p.add_argument(
        "--pool-size",
        type=int,
        default=20,
        help="pgtls-proxy backends.main.pool.size (default 20, like PgBouncer's "
        "default_pool_size; 0: a new backend session per client)",
    )
    p.add_argument(
        "--idle-sessions",
        type=int,
        help="idle mTLS sessions held open to measure the relay's RSS per session "
        "(default 1000, --quick 200; 0 skips it)",
    )
    p.add_argument(
        "--targets", default="direct,pgbouncer,pgtls", help="comma list of direct,pgbouncer,pgtls"
    )
    p.add_argument(
        "--workloads", default=",".join(WORKLOADS), help="comma list of " + ",".join(WORKLOADS)
    )
    p.add_argument("--profile", action="store_true", help="py-spy pgtls-proxy after the run")
    p.add_argument("--profile-only", action="store_true", help="set up, profile, nothing else")
    p.add_argument("--profile-secs", type=int, default=10)
    p.add_argument(
        "--profile-workload",
        choices=("steady", "connect"),
        default="steady",
        help="the pgbench load under the profile (default steady)",
    )
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument(
        "--blocking",
        action="store_true",
        help="let py-spy stop the proxy for each sample (exact stacks, much slower proxy)",
    )
    p.add_argument(
        "--profile-workers",
        type=int,
        default=1,
        help="workers of the profiled pgtls-proxy instance (default 1: one process, one CPU)",
    )
    p.add_argument("--no-pin", action="store_true", help="profile without a CPU of the relay's own")
    p.add_argument("--results", type=Path, default=HERE / "results", help="output directory")
    p.add_argument("--publish", action="store_true", help="also write docs/benchmarks.{json,png}")
    p.add_argument(
        "--as-shipped",
        action="store_true",
        help="start pgtls-proxy as python -m pgtls_proxy (see bench/launch_proxy.py)",
    )
    p.add_argument("--retries", type=int, help="repeat noisy runs, at most this often (4)")
    p.add_argument(
        "--wait-budget",
        type=float,
        help="seconds in all to wait for an idle machine before runs (60, --quick 15)",
    )
    p.add_argument(
        "--ref",
        help="run pgtls-proxy from this git commit (git archive) instead of the working tree",
    )
    p.add_argument("--no-quiet-wait", action="store_true", help="do not wait for an idle machine")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--render", type=Path, help="print tables and draw the chart from a JSON")
    args = p.parse_args(argv)
    quick = args.quick
    args.reps = args.reps or (1 if quick else 3)
    args.steady_secs = args.steady_secs or (5 if quick else 12)
    args.connect_secs = args.connect_secs or (5 if quick else 8)
    args.latency_secs = args.latency_secs or (4 if quick else 6)
    args.copy_mb = args.copy_mb or (100 if quick else 300)
    if args.idle_sessions is None:
        args.idle_sessions = 200 if quick else 1000
    if args.retries is None:
        args.retries = 1 if quick else 4
    if args.wait_budget is None:
        args.wait_budget = 15.0 if quick else 60.0
    args.targets = [t for t in args.targets.split(",") if t]
    args.workloads = [w for w in args.workloads.split(",") if w]
    for t in args.targets:
        if t not in report.TARGET_ORDER:
            p.error(f"unknown target {t!r}")
    for w in args.workloads:
        if w not in WORKLOADS:
            p.error(f"unknown workload {w!r}")
    return args


def check_tools() -> None:
    missing = [tool for tool in ("pgbench", "psql") if shutil.which(tool) is None]
    if find_pgbouncer() is None:
        missing.append("pgbouncer")
    if missing:
        raise StackError(
            f"missing: {', '.join(missing)}; run bench/ensure-tools.sh "
            "(Debian: apt-get install postgresql postgresql-client pgbouncer)"
        )


def git_describe(ref: str | None = None) -> dict[str, Any]:
    def git(*a: str) -> str:
        proc = subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    if ref is not None:
        return {"commit": git("rev-parse", ref), "ref": ref, "dirty": False, "src_changes": []}
    changed = [line[3:] for line in git("status", "--porcelain", "src").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(changed), "src_changes": changed}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def run_one(
    stack: Stack, target: Target, workload: str, args: argparse.Namespace
) -> dict[str, Any]:
    if workload == "steady":
        return workloads.steady(stack, target, args.steady_secs)
    if workload == "connect":
        return workloads.new_connection(stack, target, args.connect_secs)
    if workload == "latency":
        return workloads.latency(stack, target, args.latency_secs, args.latency_rate)
    if workload == "copy":
        return workloads.bulk_copy(stack, target)
    raise ValueError(workload)


def brief(workload: str, result: dict[str, Any]) -> str:
    parts = []
    if workload in ("steady", "connect"):
        parts.append(f"{result['tps']:.0f} tps")
    if workload == "latency":
        parts.append(
            f"avg {result['latency_avg_us']:.0f} µs, p99 {result['latency_p99_us']:.0f} µs"
            f" ({result['samples']} tx)"
        )
    if workload == "copy":
        parts.append(f"{result['mb_per_s']:.0f} MB/s in {result['wall_s']:.1f}s")
    if workload == "idle":
        parts.append(
            f"{result['rss_kib_per_session']:.1f} KiB per session: RSS {result['rss_before_kib']}"
            f" -> {result['rss_held_kib']} KiB with {result['sessions']} held,"
            f" {result['rss_after_close_kib']} KiB after closing them"
            f" (opened in {result['open_s']:.1f}s)"
        )
    for key, unit in (
        ("relay_cpu_us_per_tx", "µs relay CPU/tx"),
        ("relay_cpu_us_per_conn", "µs relay CPU/conn"),
        ("relay_cpu_ms_per_mb", "ms relay CPU/MB"),
    ):
        if key in result:
            parts.append(f"{result[key]:.1f} {unit}")
    if result.get("wall_s"):
        parts.append(f"unattributed {result['unattributed_cpu_s'] / result['wall_s']:.2f} cores")
    return ", ".join(parts)


def unattributed_cores(record: dict[str, Any]) -> float:
    result = record["result"]
    return float(result["unattributed_cpu_s"] / result["wall_s"]) if result.get("wall_s") else 0.0


def noisy(record: dict[str, Any]) -> bool:
    """Whether CPU nobody in the benchmark used ran alongside (others' work on the machine)."""
    return unattributed_cores(record) > NOISE_CORES


def noise_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    kept = [unattributed_cores(r) for r in runs if r["ok"]]
    return {
        "threshold_cores": NOISE_CORES,
        "runs": len(kept),
        "noisy_runs_kept": sum(1 for c in kept if c > NOISE_CORES),
        "runs_repeated": sum(1 for r in runs if r.get("discarded")),
        "median_unattributed_cores": statistics.median(kept) if kept else None,
        "max_unattributed_cores": max(kept) if kept else None,
        "quiet_wait_s": round(sum(r["quiet_wait_s"] for r in runs), 1),
    }


def attempt(
    stack: Stack, target: Target, workload: str, args: argparse.Namespace, rep: int
) -> dict[str, Any]:
    waited = 0.0
    if not args.no_quiet_wait:
        waited = workloads.wait_for_quiet(max_wait=min(15.0, max(0.5, args.wait_budget)))
        args.wait_budget -= max(0.0, waited - 0.5)  # the first 0.5 s is the measurement
    record: dict[str, Any] = {
        "rep": rep + 1,
        "workload": workload,
        "target": target.name,
        "started": time.time(),
        "quiet_wait_s": round(waited, 1),
    }
    prefix = f"rep {rep + 1}/{args.reps} {workload:8} {target.name:10}"
    try:
        record["result"] = run_one(stack, target, workload, args)
        record["ok"] = True
        log(f"{prefix} {brief(workload, record['result'])}")
    except (workloads.WorkloadError, subprocess.TimeoutExpired) as exc:
        record["ok"] = False
        record["error"] = str(exc)
        record["result"] = {}
        log(f"{prefix} FAILED: {exc}")
    return record


def benchmark(stack: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    targets = [stack.targets[t] for t in args.targets]
    log("warm-up: 3s of steady load per target")
    for target in targets:
        workloads.steady(stack, target, 3)
    runs: list[dict[str, Any]] = []
    retries_left = args.retries
    for rep in range(args.reps):
        shift = rep % len(targets)
        order = targets[shift:] + targets[:shift]
        for workload in args.workloads:
            for target in order:
                record = attempt(stack, target, workload, args, rep)
                if (not record["ok"] or noisy(record)) and retries_left > 0:
                    retries_left -= 1
                    log("  failed, or other load on the machine during the run: once more")
                    first = record
                    record = attempt(stack, target, workload, args, rep)
                    record["discarded"] = [first]
                runs.append(record)
    return runs


def memory(stack: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    """RSS per idle mTLS session, once per relay (not per repetition).

    pgtls-proxy is measured on an instance of its own, started for this and
    stopped after, so the heap the other workloads grew does not hide what
    the sessions cost. PgBouncer's allocations do not depend on the earlier
    load the same way (fixed-size slabs per client).
    """
    records: list[dict[str, Any]] = []
    for name in args.targets:
        if name == "direct":
            continue
        fresh = name == "pgtls"
        target = stack.start_proxy("pgtls-idle", args.workers) if fresh else stack.targets[name]
        record: dict[str, Any] = {
            "rep": 1,
            "workload": "idle",
            "target": name,
            "started": time.time(),
            "quiet_wait_s": 0.0,
        }
        try:
            record["result"] = workloads.idle_sessions(
                stack, target, args.idle_sessions, query=name != "pgbouncer"
            )
            record["ok"] = True
            log(f"idle     {name:10} {brief('idle', record['result'])}")
        except workloads.WorkloadError as exc:
            record.update(ok=False, error=str(exc), result={})
            log(f"idle     {name:10} FAILED: {exc}")
        finally:
            if fresh and target.proc is not None:
                target.proc.terminate()
                target.proc.wait(timeout=30)
        records.append(record)
    return records


def raise_fd_limit() -> None:
    """Enough descriptors for the idle sessions: the bench's clients and the
    relays it starts (which inherit the limit) hold one or two per session."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def describe(
    stack: Stack, args: argparse.Namespace, started: float, git: dict[str, Any]
) -> dict[str, Any]:
    assert stack.cluster is not None
    pg_version = tool_version([str(stack.cluster.bin_dir / "postgres"), "--version"])
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", "bench/run.py", *sys.argv[1:]]),
        "wall_s": round(time.monotonic() - started, 1),
        "git": git,  # as the proxy was started
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "postgresql": pg_version,
        "pgbench": tool_version(["pgbench", "--version"]),
    }


def params(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "reps": args.reps,
        "steady": f"pgbench -n -S -c 8 -j 2 -T {args.steady_secs}",
        "connect": f"pgbench -n -S -C -c 4 -j 2 -T {args.connect_secs}",
        "latency": f"pgbench -n -S -c 1 -j 1 -T {args.latency_secs} -R {args.latency_rate} -l",
        "copy": "psql -c '\\copy big to /dev/null'",
        "pgbench_scale": stack.scale,
        "copy_bytes": stack.copy_bytes,
        "copy_rows": stack.copy_rows,
        "workloads": args.workloads,
        "idle_sessions": args.idle_sessions,
        "order": "per repetition, each workload once per target; target order rotates",
    }


def output(data: dict[str, Any], args: argparse.Namespace) -> None:
    targets = [t for t in report.TARGET_ORDER if t in data["targets"]]
    labels = {t: data["targets"][t]["label"] for t in targets}
    print()
    print(report.ratio_table(data["summary"], targets, labels))
    print()
    print(report.detail_table(data["summary"], targets))
    print()
    print(report.noise_line(data))
    print()
    if args.render:
        png = args.render.with_suffix(".png")
    else:
        args.results.mkdir(parents=True, exist_ok=True)
        latest = args.results / "latest.json"
        latest.write_text(json.dumps(data, indent=1) + "\n")
        log(f"results: {latest}")
        png = args.results / "latest.png"
    if report.render_chart(data, png):
        log(f"chart: {png}")
    else:
        log("chart skipped: matplotlib is not installed (pip install -r bench/requirements.txt)")
    if args.publish and not args.render:
        docs = ROOT / "docs"
        (docs / "benchmarks.json").write_text(json.dumps(data, indent=1) + "\n")
        if png.exists():
            shutil.copy(png, docs / "benchmarks.png")
        log(f"published: {docs / 'benchmarks.json'}, {docs / 'benchmarks.png'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        output(json.loads(args.render.read_text()), args)
        return 0
    started = time.monotonic()
    raise_fd_limit()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        check_tools()
    except StackError as exc:
        log(f"bench: {exc}")
        return 2
    stack = Stack(
        scale=args.scale,
        copy_mb=args.copy_mb,
        workers=args.workers,
        pool_size=args.pool_size,
        idle_sessions=args.idle_sessions,
        as_shipped=args.as_shipped,
        ref=args.ref,
        keep=args.keep,
        log=log,
    )
    git = git_describe(args.ref)
    try:
        stack.setup()
        log(f"setup done in {time.monotonic() - started:.0f}s")
        for t in args.targets:
            info = stack.targets[t].info
            log(f"  {t:10} {info.get('version', '')} {info.get('tls', '')}")
        data: dict[str, Any] | None = None
        if not args.profile_only:
            runs = benchmark(stack, args)
            idle = memory(stack, args) if args.idle_sessions > 0 else []
            data = {
                "meta": describe(stack, args, started, git),
                "params": params(stack, args),
                "targets": {
                    t: {"label": stack.targets[t].label, **stack.targets[t].info}
                    for t in args.targets
                },
                "summary": report.summarise(runs + idle, args.targets),
                "noise": noise_summary(runs),
                "runs": runs,
                "idle": idle,
            }
        if args.profile or args.profile_only:
            import profiling

            profiled = stack.start_proxy("pgtls-profile", args.profile_workers)
            stack.check(profiled)
            prof = profiling.profile_proxy(
                stack,
                profiled,
                args.results,
                secs=args.profile_secs,
                rate=args.profile_rate,
                native=args.native,
                nonblocking=not args.blocking,
                pin=not args.no_pin,
                workload=args.profile_workload,
                log=log,
            )
            if data is not None:
                data["profile"] = prof
        if data is not None:
            data["meta"]["wall_s"] = round(time.monotonic() - started, 1)
            output(data, args)
            failed = [r for r in data["runs"] + data["idle"] if not r["ok"]]
            if failed:
                log(f"{len(failed)} run(s) failed; see 'error' in the JSON")
                return 1
        return 0
    except StackError as exc:
        log(f"bench: {exc}")
        return 2
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        stack.stop()
        log(f"total {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    raise SystemExit(main())
