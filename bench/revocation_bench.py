"""What revocation checking costs per handshake: ``revocation: off`` vs ``strict`` (and lenient).

The proxy runs in this process on port 0; client processes (stdlib ``ssl``,
so the numbers are the proxy's, not libpq's) loop over full connections for
a fixed time: SSLRequest, a TLS handshake with a client certificate, a
StartupMessage, and the proxy's reply. The backend address is a closed port,
so that reply is an immediate FATAL 08006: reading it proves the proxy
finished verifying the certificate (in TLS 1.3 the client is done first),
and no database time enters the figure.

Strict and lenient load one CRL of ``--entries`` revoked serials (the client
certificate is not among them). Run:

    .venv/bin/python bench/revocation_bench.py [--seconds 10] [--clients 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import socket
import ssl
import struct
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio
import yaml

from pgtls_proxy.ca import authority
from pgtls_proxy.config import load_config
from pgtls_proxy.logsetup import setup_logging
from pgtls_proxy.runtime import build_state
from pgtls_proxy.server import Proxy

SSL_REQUEST = struct.pack("!II", 8, 80877103)


def startup_packet() -> bytes:
    body = struct.pack("!I", 196608) + b"user\0alice\0database\0postgres\0\0"
    return struct.pack("!I", len(body) + 4) + body


def make_pki(base: Path, entries: int) -> None:
    authority.init_ca(base)
    authority.issue_server(base, "localhost", ["IP:127.0.0.1"])
    authority.issue_client(base, "alice")
    ca = authority.load_certificates(base / "ca.crt")[0]
    key = authority.load_private_key(base / "ca.key")
    now = dt.datetime.now(dt.UTC)
    revoked = [(10**12 + i, now) for i in range(entries)]
    crl = authority.build_crl(issuer_cert=ca, issuer_key=key, revoked=revoked)  # type: ignore[arg-type]
    authority.write_pem(base / "crl.pem", crl)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(base: Path, mode: str) -> Path:
    data: dict[str, Any] = {
        "listen": [{"address": "127.0.0.1:0"}],
        "tls": {
            "cert_file": str(base / "localhost.crt"),
            "key_file": str(base / "localhost.key"),
            "client_ca_file": str(base / "ca.crt"),
            "crl_files": [str(base / "crl.pem")],
            "revocation": mode,
        },
        "rules": [{"identity": "alice", "user": "alice"}],
        "backends": {"main": {"address": f"127.0.0.1:{closed_port()}"}},
        "metrics": {"address": None},
        "logging": {"audit": False},
        "workers": 1,
    }
    path = base / f"{mode}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def client_loop(base: str, port: int, seconds: float, out: Any) -> None:
    """Full connections for ``seconds``; puts the count of completed ones on ``out``."""
    ctx = ssl.create_default_context(cafile=f"{base}/ca.crt")
    ctx.load_cert_chain(f"{base}/alice.crt", f"{base}/alice.key")
    startup = startup_packet()
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(SSL_REQUEST)
            if raw.recv(1) != b"S":
                raise SystemExit("no S")
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(startup)
                reply = tls.recv(4096)
        if not reply.startswith(b"E"):
            raise SystemExit(f"unexpected reply {reply[:20]!r}")
        done += 1
    out.put(done)


class InProcessProxy:
    """The proxy's own trio loop in a thread of this process."""

    def __init__(self, config_path: Path) -> None:
        self.proxy = Proxy(load_config(config_path))
        self.port = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(self.proxy.run)
            self.port = bound.ports[0]
            self._ready.set()

    def __enter__(self) -> InProcessProxy:
        self._thread.start()
        if not self._ready.wait(30):
            raise SystemExit("proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self.proxy.request_stop, trio_token=self._token)
        self._thread.join(30)


def measure(base: Path, mode: str, seconds: float, clients: int) -> tuple[float, float, float]:
    """(handshakes per second, proxy CPU seconds per handshake, seconds to build the state).

    The clients are other processes, so this process's CPU time is the proxy's.
    """
    config_path = write_config(base, mode)
    started = time.perf_counter()
    build_state(load_config(config_path))
    build_time = time.perf_counter() - started
    with InProcessProxy(config_path) as running:
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        procs = [
            ctx.Process(target=client_loop, args=(str(base), running.port, seconds, results))
            for _ in range(clients)
        ]
        cpu = time.process_time()
        for proc in procs:
            proc.start()
        total = sum(results.get(timeout=seconds + 60) for _ in procs)
        cpu = time.process_time() - cpu
        for proc in procs:
            proc.join()
        counted = running.proxy.metrics.registry.get_sample_value(
            "pgtls_handshakes_total", {"result": "ok"}
        )
        assert counted == total, (counted, total)
    return total / seconds, cpu / total, build_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per mode (default 10)")
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--entries", type=int, default=10_000, help="revoked serials in the CRL")
    parser.add_argument("--modes", default="off,strict,lenient")
    args = parser.parse_args()
    setup_logging("error")  # every connection ends in a backend error by design
    with tempfile.TemporaryDirectory(prefix="pgtls-bench-") as tmp:
        base = Path(tmp)
        make_pki(base, args.entries)
        size = (base / "crl.pem").stat().st_size
        print(
            f"{args.clients} client process(es), {args.seconds:g}s per mode, CRL with"
            f" {args.entries} entries ({size // 1024} KiB PEM), {ssl.OPENSSL_VERSION}"
        )
        rows = [
            (mode, *measure(base, mode, args.seconds, args.clients))
            for mode in args.modes.split(",")
        ]
    baseline = rows[0][1]
    print(
        f"{'revocation':<11} {'handshakes/s':>13} {'vs ' + rows[0][0]:>9}"
        f" {'proxy CPU/handshake':>20} {'state build':>12}"
    )
    for mode, rate, cpu, build in rows:
        print(
            f"{mode:<11} {rate:>13.1f} {rate / baseline:>9.0%}"
            f" {cpu * 1000:>18.2f}ms {build * 1000:>10.1f}ms"
        )


if __name__ == "__main__":
    main()
