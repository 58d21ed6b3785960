"""RSS of a ``pgtls-proxy run`` process under short mTLS connections and a handshake flood.

Starts a throwaway PostgreSQL and PKI, the proxy (``workers: 1``, strict
revocation) as a subprocess from ``--src`` (a ``src`` directory, so an older
checkout can be measured the same way), then:

1. psycopg clients in ``--threads`` threads connect, run ``select 1`` and
   close, until each count of ``--counts``; the proxy's VmRSS after each;
2. ``--flood`` seconds of bare handshakes (SSLRequest, TLS with the client
   certificate, close) from ``--threads`` threads as fast as they go; VmRSS
   before, after, and after ``--rest`` idle seconds.

    .venv/bin/python bench/memory_bench.py --src src --out memory.json \\
        [--counts 1000,5000,20000] [--flood 30] [--rest 30] [--threads 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from pgtls_proxy.ca import authority
from pgtls_proxy.demo.cluster import PgCluster, find_pg_bin_dir

SSL_REQUEST = struct.pack("!II", 8, 80877103)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_proxy(src: Path, config: Path) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=str(src.resolve()))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgtls_proxy", "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    stderr = proc.stderr
    assert stderr is not None
    for line in stderr:
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            # Keep reading, or the proxy blocks once the pipe is full.
            threading.Thread(target=stderr.read, daemon=True).start()
            return proc, int(found.group(1))
    raise RuntimeError("the proxy did not start")


def in_threads(threads: int, target: Any, *args: Any) -> None:
    workers = [threading.Thread(target=target, args=(i, *args)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("src"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--counts", default="1000,5000,20000")
    parser.add_argument("--flood", type=float, default=30)
    parser.add_argument("--rest", type=float, default=30)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pgtls-memory-"))
    pki = tmp / "pki"
    authority.init_ca(pki)
    authority.issue_server(pki, "localhost", ["IP:127.0.0.1"])
    authority.issue_client(pki, "alice")
    bin_dir = find_pg_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL server binaries not found (set PG_BIN_DIR)")
    cluster = PgCluster(bin_dir=bin_dir)
    cluster.init()
    cluster.start()
    cluster.create_user("alice")
    config = {
        "listen": [{"address": "127.0.0.1:0"}],
        "tls": {
            "cert_file": str(pki / "localhost.crt"),
            "key_file": str(pki / "localhost.key"),
            "client_ca_file": str(pki / "ca.crt"),
            "crl_files": [str(pki / "crl.pem")],
            "revocation": "strict",
        },
        "rules": [{"identity": "alice", "user": "alice"}],
        "backends": {"main": {"address": f"127.0.0.1:{cluster.port}"}},
        "metrics": {"address": "127.0.0.1:0"},
    }
    (tmp / "proxy.yaml").write_text(yaml.safe_dump(config))
    proc, port = start_proxy(args.src, tmp / "proxy.yaml")
    time.sleep(1)
    result: dict[str, Any] = {"src": str(args.src), "rss_mb": {"start": rss_mb(proc.pid)}}
    params: dict[str, Any] = {
        "host": "localhost",
        "hostaddr": "127.0.0.1",
        "port": port,
        "user": "alice",
        "dbname": "postgres",
        "sslmode": "verify-full",
        "sslrootcert": str(pki / "ca.crt"),
        "sslcert": str(pki / "alice.crt"),
        "sslkey": str(pki / "alice.key"),
        "gssencmode": "disable",
    }
    try:
        done = 0
        for target in (int(n) for n in args.counts.split(",") if n):
            share = target - done

            def connect(i: int, share: int = share) -> None:
                for _ in range(share // args.threads + (i < share % args.threads)):
                    with psycopg.connect(**params, autocommit=True) as conn:
                        conn.execute("select 1").fetchone()

            in_threads(args.threads, connect)
            done = target
            result["rss_mb"][str(target)] = rss_mb(proc.pid)
            print(f"{target} connections: {result['rss_mb'][str(target)]} MB", flush=True)
        if args.flood > 0:
            ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            ctx.load_cert_chain(pki / "alice.crt", pki / "alice.key")
            ctx.set_alpn_protocols(["postgresql"])
            stop = time.monotonic() + args.flood
            handshakes = [0] * args.threads

            def flood(i: int) -> None:
                while time.monotonic() < stop:
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                            raw.sendall(SSL_REQUEST)
                            if raw.recv(1) == b"S":
                                ctx.wrap_socket(raw, server_hostname="localhost").close()
                                handshakes[i] += 1
                    except OSError:
                        pass

            before = rss_mb(proc.pid)
            in_threads(args.threads, flood)
            after = rss_mb(proc.pid)
            time.sleep(args.rest)
            result["flood"] = {
                "seconds": args.flood,
                "handshakes": sum(handshakes),
                "rss_mb_before": before,
                "rss_mb_after": after,
                "rss_mb_after_rest": rss_mb(proc.pid),
                "rest_seconds": args.rest,
            }
            print(f"flood: {result['flood']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
        cluster.cleanup()
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
