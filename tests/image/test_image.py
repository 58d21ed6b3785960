"""The built container image, run for real under podman (``make test-image``).

Each test starts the image as it is meant to be deployed: the image's own user,
a read-only root filesystem with a tmpfs on /tmp only, every capability dropped,
``no-new-privileges``, and the config, certificates, key and CRL mounted
read-only. Clients and PostgreSQL run on the host.

Networking: slirp4netns, so that every packet the host sees stays on 127.0.0.1.
A published port listens on the host's 127.0.0.1 and slirp4netns carries the
connection into the container; with ``allow_host_loopback`` the container
reaches the host's 127.0.0.1 (where the test PostgreSQL listens) as 10.0.2.2.
Those 10.0.2.x addresses exist only inside the container's own network
namespace. podman's default bridge would work as well, but it puts a
10.88.0.0/16 bridge on the host and sends the traffic across it.

The engine command, run flags and image come from the environment that
``make test-image`` sets (PGTLS_CONTAINER_ENGINE, PGTLS_CONTAINER_RUN_FLAGS,
PGTLS_IMAGE); the defaults suit this machine kind (see README.md, Containers).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.clients import connect, served_serial
from tests.fixtures.pki import PKIFiles, issue_custom

pytestmark = [pytest.mark.image, pytest.mark.integration]

ENGINE = shlex.split(
    os.environ.get("PGTLS_CONTAINER_ENGINE", "podman --runtime runc --cgroup-manager cgroupfs")
)
RUN_FLAGS = shlex.split(
    os.environ.get(
        "PGTLS_CONTAINER_RUN_FLAGS", "--ulimit nofile=1024:1024 --ulimit nproc=4096:4096"
    )
)
IMAGE = os.environ.get("PGTLS_IMAGE", "pgtls-proxy:latest")

NETWORK = "slirp4netns:allow_host_loopback=true,port_handler=slirp4netns"
#: The host's 127.0.0.1 as the container sees it through slirp4netns.
HOST_LOOPBACK = "10.0.2.2"
HARDENING = [
    "--read-only",
    "--read-only-tmpfs=false",  # podman's extra tmpfs mounts: docker has none
    "--tmpfs",
    "/tmp:rw,nosuid,nodev,noexec,size=16m",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
]
CONF = "/etc/pgtls-proxy"
UID = 10001
DRAIN_TIMEOUT = 3
STOP_TIMEOUT = 20
assert STOP_TIMEOUT > DRAIN_TIMEOUT


def engine(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*ENGINE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{shlex.join([*ENGINE, *args])} exited {proc.returncode}:\n{proc.stderr}"
        )
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_key_pair(
    src_crt: Path, src_key: Path, conf: Path, mode: int = 0o600, owner: tuple[int, int] = (UID, UID)
) -> None:
    """The server certificate and key as the container reads them: key owned by its uid."""
    for src, name in ((src_crt, "server.crt"), (src_key, "server.key")):
        tmp = conf / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        os.chmod(tmp, mode if name.endswith(".key") else 0o644)
        if name.endswith(".key"):
            os.chown(tmp, *owner)
        tmp.replace(conf / name)


def make_conf(
    directory: Path,
    pki: PKIFiles,
    pg_port: int,
    key_mode: int = 0o600,
    key_owner: tuple[int, int] = (UID, UID),
) -> Path:
    """/etc/pgtls-proxy for one container: config, CA, CRL, server certificate and key."""
    directory.mkdir(mode=0o755)
    for src, name in ((pki.ca, "ca.crt"), (pki.crl, "crl.pem")):
        shutil.copyfile(src, directory / name)
        os.chmod(directory / name, 0o644)
    write_key_pair(pki.server_cert, pki.server_key, directory, key_mode, key_owner)
    config = {
        "listen": [{"address": "0.0.0.0:6432"}],
        "tls": {
            "cert_file": "server.crt",
            "key_file": "server.key",
            "client_ca_file": "ca.crt",
            "crl_files": ["crl.pem"],
        },
        "rules": [{"identity": "alice", "user": "alice"}],
        "backends": {"main": {"address": f"{HOST_LOOPBACK}:{pg_port}", "connect_timeout": 5}},
        "metrics": {"address": "0.0.0.0:9187"},
        "shutdown": {"drain_timeout": DRAIN_TIMEOUT},
    }
    (directory / "pgtls-proxy.yaml").write_text(yaml.safe_dump(config))
    os.chmod(directory / "pgtls-proxy.yaml", 0o644)
    return directory


@dataclass
class Container:
    name: str
    conf: Path
    port: int
    metrics_port: int

    def inspect(self) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(engine("inspect", self.name).stdout)
        return data[0]

    def running(self) -> bool:
        return bool(self.inspect()["State"]["Running"])

    def logs(self) -> str:
        proc = engine("logs", self.name)
        return proc.stdout + proc.stderr

    def exec(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return engine("exec", self.name, *argv, check=False)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def sample(self, name: str, **labels: str) -> float:
        return sum(
            s.value
            for family in text_string_to_metric_families(self.metrics())
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def wait_ready(self, timeout: float = 90) -> None:
        """Until /readyz answers 200 on the published metrics port."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                url = f"http://127.0.0.1:{self.metrics_port}/readyz"
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if not self.running():
                raise AssertionError(f"{self.name} exited before it was ready:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not ready in {timeout}s:\n{self.logs()}")
            time.sleep(0.5)


Start = Callable[..., Container]


@pytest.fixture(scope="module")
def image() -> str:
    """The image under test; fails (not skips) when it was not built."""
    if shutil.which(ENGINE[0]) is None:
        pytest.fail(f"{ENGINE[0]} not found: `make test-image` installs nothing by itself")
    proc = engine("image", "inspect", IMAGE, check=False)
    assert proc.returncode == 0, f"{IMAGE} not found: run `make image` first\n{proc.stderr}"
    return IMAGE


@pytest.fixture(scope="module")
def start(
    image: str, tmp_path_factory: pytest.TempPathFactory, pki: PKIFiles, pg_cluster: Any
) -> Iterator[Start]:
    """Start the image hardened, with a fresh /etc/pgtls-proxy; removed at teardown."""
    names: list[str] = []

    def run(
        tag: str,
        key_mode: int = 0o600,
        key_owner: tuple[int, int] = (UID, UID),
        wait: bool = True,
    ) -> Container:
        conf = tmp_path_factory.mktemp(tag) / "conf"
        make_conf(conf, pki, pg_cluster.port, key_mode, key_owner)
        name = f"pgtls-proxy-test-{tag}-{os.getpid()}"
        engine("rm", "--force", "--time", "0", name, check=False)
        container = Container(name, conf, free_port(), free_port())
        names.append(name)
        engine(
            "run",
            "--detach",
            "--name",
            name,
            *RUN_FLAGS,
            *HARDENING,
            "--network",
            NETWORK,
            "--publish",
            f"127.0.0.1:{container.port}:6432",
            "--publish",
            f"127.0.0.1:{container.metrics_port}:9187",
            "--volume",
            f"{conf}:{CONF}:ro",
            image,
        )
        if wait:
            container.wait_ready()
        return container

    yield run
    for name in names:
        engine("rm", "--force", "--time", "0", name, check=False)


@pytest.fixture(scope="module")
def proxy(start: Start) -> Container:
    """One container shared by the tests that do not change or stop it."""
    return start("main")


def psql(pki: PKIFiles, port: int, *, cert: str | None) -> subprocess.CompletedProcess[str]:
    """The psql CLI through the published port, with alice's certificate or with none."""
    crt, key = pki.client("alice") if cert else (Path("/nonexistent"), Path("/nonexistent"))
    conninfo = (
        f"host=localhost hostaddr=127.0.0.1 port={port} dbname=app user=alice "
        f"sslmode=verify-full sslrootcert={pki.ca} sslcert={crt} sslkey={key} "
        "connect_timeout=10 gssencmode=disable"
    )
    return subprocess.run(
        ["psql", conninfo, "-XAtc", "select current_user"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGAPPNAME": "pgtls-proxy-image-test"},
        check=False,
    )


def mount_options(mountinfo: str) -> dict[str, set[str]]:
    """Mount point -> per-mount options, from /proc/PID/mountinfo."""
    out: dict[str, set[str]] = {}
    for line in mountinfo.splitlines():
        fields = line.split()
        out[fields[4]] = set(fields[5].split(","))
    return out


# ----------------------------------------------------------------- tests


def test_runs_as_10001_read_only_without_capabilities(proxy: Container) -> None:
    status = proxy.exec("cat", "/proc/1/status")
    assert status.returncode == 0, status.stderr
    fields = dict(line.split(":", 1) for line in status.stdout.splitlines())
    assert fields["Name"].strip() == "pgtls-proxy"  # the daemon is PID 1, no shell in between
    assert fields["Uid"].split() == [str(UID)] * 4
    assert fields["Gid"].split() == [str(UID)] * 4
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, f"{cap}: {fields[cap]}"
    assert fields["NoNewPrivs"].strip() == "1"

    mountinfo = proxy.exec("cat", "/proc/1/mountinfo")
    assert mountinfo.returncode == 0, mountinfo.stderr
    mounts = mount_options(mountinfo.stdout)
    assert "ro" in mounts["/"], mounts["/"]
    assert "ro" in mounts[CONF], mounts[CONF]
    assert "rw" in mounts["/tmp"], mounts["/tmp"]
    # What the daemon wrote went to the tmpfs, and nothing else can be written.
    assert proxy.exec("sh", "-c", "ls /tmp/pgtls-proxy-*/metrics").returncode == 0
    for path in ("/opt/pgtls-proxy/x", f"{CONF}/x"):
        touch = proxy.exec("touch", path)
        assert touch.returncode != 0
        assert "Read-only file system" in touch.stderr, touch.stderr

    config = proxy.inspect()["Config"]
    assert config["User"] == f"{UID}:{UID}"  # the image's own USER, not a run flag


def test_healthcheck_turns_healthy(proxy: Container) -> None:
    test = proxy.inspect()["Config"]["Healthcheck"]["Test"]
    assert any("/healthz" in part for part in test), test
    deadline = time.monotonic() + 60
    while True:
        check = engine("healthcheck", "run", proxy.name, check=False)
        if check.returncode == 0:
            break
        assert time.monotonic() < deadline, f"never healthy: {check.stdout}{check.stderr}"
        time.sleep(1)
    state = proxy.inspect()["State"]
    health = state.get("Health") or state.get("Healthcheck")
    assert health is not None and health["Status"] == "healthy", state


def test_psql_with_a_certificate_through_the_published_port(
    proxy: Container, pki: PKIFiles
) -> None:
    ok = psql(pki, proxy.port, cert="alice")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "alice"

    refused = psql(pki, proxy.port, cert=None)
    assert refused.returncode != 0
    assert "certificate required" in refused.stderr, refused.stderr
    assert proxy.sample("pgtls_handshakes_total", result="no_certificate") >= 1

    again = psql(pki, proxy.port, cert="alice")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "alice"


def test_sighup_serves_a_rotated_certificate_and_keeps_open_sessions(
    start: Start, pki: PKIFiles, tmp_path: Path
) -> None:
    c = start("rotate")
    old_serial = served_serial(pki, c.port)
    with connect(pki, c.port, "alice", dbname="app") as session:
        pid = session.execute("select pg_backend_pid()").fetchone()
        rotated = tmp_path / "rotated"
        rotated.mkdir()
        cert = issue_custom(
            rotated,
            "server",
            ca_dir=pki.dir,
            cn="localhost",
            usage="server",
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        assert cert.serial_number != old_serial
        write_key_pair(rotated / "server.crt", rotated / "server.key", c.conf)
        # Still the old one: files alone change nothing until SIGHUP.
        assert served_serial(pki, c.port) == old_serial

        engine("kill", "--signal", "HUP", c.name)
        deadline = time.monotonic() + 30
        while c.sample("pgtls_config_reloads_total", result="ok") < 1:
            assert c.sample("pgtls_config_reloads_total", result="failed") == 0, c.logs()
            assert time.monotonic() < deadline, f"no reload within 30s:\n{c.logs()}"
            time.sleep(0.2)

        assert served_serial(pki, c.port) == cert.serial_number
        assert session.execute("select pg_backend_pid()").fetchone() == pid
    assert c.running()


def test_stop_drains_and_exits_zero(start: Start, pki: PKIFiles) -> None:
    c = start("stop")
    with connect(pki, c.port, "alice", dbname="app") as session:
        assert session.execute("select 1").fetchone() == (1,)
        began = time.monotonic()
        engine("stop", "--time", str(STOP_TIMEOUT), c.name, timeout=STOP_TIMEOUT + 30)
        took = time.monotonic() - began
        with pytest.raises(psycopg.OperationalError):
            session.execute("select 1")
    state = c.inspect()["State"]
    assert state["ExitCode"] == 0, f"{state}\n{c.logs()}"
    # Ended by SIGTERM and the drain, not by the SIGKILL at the end of the stop timeout.
    assert took < STOP_TIMEOUT, took
    assert "SIGTERM received" in c.logs()


def test_a_key_readable_by_others_is_refused_at_start(start: Start) -> None:
    c = start("keymode", key_mode=0o644, wait=False)
    deadline = time.monotonic() + 30
    while c.running():
        assert time.monotonic() < deadline, f"still running after 30s:\n{c.logs()}"
        time.sleep(0.2)
    state = c.inspect()["State"]
    lines = [line for line in c.logs().splitlines() if line.strip()]
    assert state["ExitCode"] == 2, f"exit code {state['ExitCode']}:\n" + "\n".join(lines)
    # One line says why it stopped; at most a warning before it (the container's
    # low descriptor limit is worth one).
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    assert all(" WARNING " in line for line in lines[:-1]), lines
    assert f"{CONF}/server.key" in errors[0], errors[0]
    assert "readable by group or others" in errors[0], errors[0]


def test_a_key_0640_owned_by_root_with_the_group_serves(start: Start, pki: PKIFiles) -> None:
    """The other layout the image documents: root owns the key, group 10001 reads it."""
    c = start("keygroup", key_mode=0o640, key_owner=(0, UID))
    ok = psql(pki, c.port, cert="alice")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == "alice"
