"""``pgtls-proxy demo``: the whole path on a throwaway PKI and PostgreSQL.

It is the quickest way to see what the proxy does: a CA, a server and a
client certificate, a PostgreSQL cluster in a temporary directory, the proxy
in front of it, and the exact ``psql`` line that connects through it. Ctrl-C
stops everything and removes the temporary files.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import trio
import yaml

from pgtls_proxy.ca import authority
from pgtls_proxy.config import load_config
from pgtls_proxy.demo.cluster import PgCluster, find_pg_bin_dir
from pgtls_proxy.logsetup import setup_logging
from pgtls_proxy.server import Bound, Proxy

DEMO_USER = "alice"
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found.\n"
    "Install them, e.g. on Debian/Ubuntu: sudo apt-get install postgresql\n"
    "or point PG_BIN_DIR at the directory that holds them, then run the demo again."
)


def write_demo_config(directory: Path, pki: Path, backend_port: int, port: int) -> Path:
    """The config the demo runs with; also a readable example of a real one."""
    config = {
        "listen": [{"address": f"127.0.0.1:{port}"}],
        "tls": {
            "cert_file": str(pki / "localhost.crt"),
            "key_file": str(pki / "localhost.key"),
            "client_ca_file": str(pki / "ca.crt"),
            "crl_files": [str(pki / "crl.pem")],
            "revocation": "strict",
        },
        "identity": {"field": "cn", "on_user_mismatch": "reject"},
        "rules": [
            {"identity": DEMO_USER, "user": DEMO_USER, "databases": ["*"]},
        ],
        "backends": {"main": {"address": f"127.0.0.1:{backend_port}"}},
        "metrics": {"address": "127.0.0.1:0"},
        "shutdown": {"drain_timeout": 2},
    }
    path = directory / "pgtls-proxy.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def psql_line(pki: Path, port: int, user: str = DEMO_USER, dbname: str = "postgres") -> str:
    conninfo = (
        f"host=localhost port={port} dbname={dbname} user={user} sslmode=verify-full "
        f"sslrootcert={pki / 'ca.crt'} sslcert={pki / (user + '.crt')} "
        f"sslkey={pki / (user + '.key')}"
    )
    return f"psql {shlex.quote(conninfo)}"


def run_demo(port: int = 6432, keep: bool = False) -> int:
    bin_dir = find_pg_bin_dir()
    if bin_dir is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="pgtls-proxy-demo-"))
    # Traversable (not listable) so the postgres OS user can reach its data
    # directory below it when the demo runs as root; the keys stay 0600.
    workdir.chmod(0o711)
    pki = workdir / "pki"
    cluster: PgCluster | None = None
    try:
        authority.init_ca(pki)
        authority.issue_server(pki, "localhost", ["IP:127.0.0.1", "IP:::1"])
        authority.issue_client(pki, DEMO_USER)
        print(f"PKI in {pki}", file=sys.stderr)
        cluster = PgCluster(workdir / "pg", bin_dir=bin_dir)
        cluster.init()
        cluster.start()
        cluster.create_user(DEMO_USER)
        print(f"PostgreSQL {bin_dir} on 127.0.0.1:{cluster.port}", file=sys.stderr)
        config_path = write_demo_config(workdir, pki, cluster.port, port)
        config = load_config(config_path)
        setup_logging(config.logging.level, config.logging.format)
        proxy = Proxy(config)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                bound: Bound = await nursery.start(proxy.run)
                print(
                    "\npgtls-proxy is running. Connect through it with:\n\n  "
                    + psql_line(pki, bound.ports[0])
                    + "\n\nthen: select current_user;\n"
                    + (
                        f"Metrics: http://127.0.0.1:{bound.metrics_port}/metrics\n"
                        if bound.metrics_port
                        else ""
                    )
                    + "Press Ctrl-C to stop and remove everything.\n",
                    flush=True,
                )

        trio.run(main)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if cluster is not None:
            cluster.stop()
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            print("demo stopped; temporary files removed", file=sys.stderr)
