"""The Kubernetes base in deploy/kubernetes: valid objects that agree with each other.

The base is rendered as kustomize renders it (``kubectl kustomize`` where
kubectl is installed; otherwise :func:`render_kustomization`, which handles
the only kustomization fields the base uses and refuses any other), and every
object is validated against the schemas of a current Kubernetes release
(kubernetes-validate ships them, so no network is needed).

No schema knows that the readiness probe must hit the port the config's
metrics endpoint listens on, or that the Secret must hold every file the
config names. Those cross-references are the ``check_*`` functions below,
each a function of the rendered manifests, and
``test_each_check_catches_what_it_guards_against`` runs every one of them on
a copy broken the way it guards against: a check that cannot fail fails.
"""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import os
import posixpath
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pgtls_proxy.ca import authority
from pgtls_proxy.config import Config, build_config
from pgtls_proxy.watch import watched_files
from tests.fixtures.daemon import Daemon
from tests.fixtures.pki import PKIFiles

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "kubernetes"
COMPONENT = BASE / "prometheus-operator"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_SCRIPT = ROOT / "scripts" / "render_prometheusrule.py"

CONTAINER = "pgtls-proxy"
#: The namespace whose pods may scrape the metrics port.
MONITORING_NAMESPACE = "monitoring"
#: What the base may contain: core API groups only, so it applies without CRDs.
BASE_KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}

# Measured with `bench/pod_memory.py --workers 2 --sessions 1000` (see the
# comment above the Deployment's resources): the supervisor and 2 workers,
# RSS summed over the processes, started and idle; and what each idle mTLS
# session adds. The memory request must cover the config's max_connections.
MEASURED_IDLE_KIB = 144_008
MEASURED_KIB_PER_SESSION = 33.9

# The kubelet's fsGroup rule for read-only volumes (Secret, ConfigMap):
# files get group fsGroup and these bits on top of defaultMode.
KUBELET_FSGROUP_READONLY_BITS = 0o440


# ---------------------------------------------------------------- rendering


def _load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


_KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "components"}


def render_kustomization(directory: Path, *, component: bool = False) -> list[dict[str, Any]]:
    """Render a kustomization that only lists ``resources`` and ``components``.

    That is all the base and its component use, and for such a kustomization
    kustomize's output is the listed objects, unchanged. Any other field
    (a namespace, patches, generators) would change the objects, so it is
    refused here rather than ignored: install kubectl to render such a one.
    """
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(spec) - _KUSTOMIZATION_FIELDS
    if unknown:
        raise NotImplementedError(
            f"{directory}/kustomization.yaml uses {sorted(unknown)}: render it with kubectl"
        )
    assert spec.get("kind") == ("Component" if component else "Kustomization"), directory
    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        assert not posixpath.isabs(entry) and "://" not in entry, entry
        path = directory / entry
        if path.is_dir():
            objects.extend(render_kustomization(path))
        else:
            objects.extend(_load_documents(path))
    for entry in spec.get("components", []):
        objects.extend(render_kustomization(directory / entry, component=True))
    return objects


def kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def render(directory: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization: kubectl's rendering if it is there, else ours."""
    if shutil.which("kubectl") is not None:
        return kubectl_kustomize(directory)
    return render_kustomization(directory)


def overlay_with_component(tmp: Path) -> Path:
    """A kustomization that is the base plus the Prometheus Operator component.

    kustomize wants relative paths, and a kustomization may not live inside
    the base it includes, so it is written next to the test's files.
    """
    base = os.path.relpath(BASE, tmp)
    component = os.path.relpath(COMPONENT, tmp)
    (tmp / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources: [{base}]\n"
        f"components: [{component}]\n"
    )
    return tmp


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


# ---------------------------------------------------------------- the manifests


@dataclass
class Manifests:
    """The rendered base and the example Secret, with the lookups the checks share."""

    objects: list[dict[str, Any]]
    secret: dict[str, Any]

    def copy(self) -> Manifests:
        return Manifests(copy.deepcopy(self.objects), copy.deepcopy(self.secret))

    def find(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [
            o
            for o in self.objects
            if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
        ]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    def services(self) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == "Service"]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.find("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def pod_labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.deployment["spec"]["template"]["metadata"]["labels"]
        return labels

    @property
    def container(self) -> dict[str, Any]:
        (found,) = [c for c in self.pod["containers"] if c["name"] == CONTAINER]
        return found

    def container_port(self, port: int | str) -> int:
        """A port as a probe, Service or policy names it: a number or a container port name."""
        if isinstance(port, int):
            return port
        (number,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == port]
        return int(number)

    def volume(self, name: str) -> dict[str, Any]:
        (found,) = [v for v in self.pod["volumes"] if v["name"] == name]
        return found

    def mount_of(self, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """(volumeMount, volume) of the one volume of type ``source`` (configMap, secret)."""
        found = [
            (m, self.volume(m["name"]))
            for m in self.container["volumeMounts"]
            if source in self.volume(m["name"])
        ]
        assert len(found) == 1, f"expected one {source} volume mounted, found {len(found)}"
        return found[0]

    @property
    def config_path(self) -> str:
        args = self.container["args"]
        return str(args[args.index("--config") + 1])

    @property
    def configmap(self) -> dict[str, Any]:
        _, volume = self.mount_of("configMap")
        return self.find("ConfigMap", volume["configMap"]["name"])

    @property
    def config_data(self) -> dict[str, Any]:
        text = self.configmap["data"][posixpath.basename(self.config_path)]
        data: dict[str, Any] = yaml.safe_load(text)
        return data

    def edit_config(self, change: Callable[[dict[str, Any]], None]) -> None:
        data = self.config_data
        change(data)
        key = posixpath.basename(self.config_path)
        self.configmap["data"][key] = yaml.safe_dump(data, sort_keys=False)

    @property
    def config(self) -> Config:
        """The ConfigMap's config as the proxy parses it, at the path the pod reads it from."""
        return build_config(
            self.config_data,
            Path(posixpath.dirname(self.config_path)),
            Path(self.config_path),
        )

    @property
    def secret_keys(self) -> set[str]:
        return set(self.secret.get("data", {})) | set(self.secret.get("stringData", {}))


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(BASE)


@pytest.fixture
def manifests(rendered: list[dict[str, Any]]) -> Manifests:
    return Manifests(copy.deepcopy(rendered), _load_documents(SECRET_EXAMPLE)[0])


def _project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        version: str = tomllib.load(fh)["project"]["version"]
    return version


def _dockerfile_user() -> tuple[int, int]:
    users = [
        line.split()[1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("USER ")
    ]
    uid, gid = users[-1].split(":")
    return int(uid), int(gid)


def _quantity_millicores(value: str | int) -> int:
    text = str(value)
    return int(text[:-1]) if text.endswith("m") else int(float(text) * 1000)


_MEMORY_UNITS = {"Ki": 1, "Mi": 1024, "Gi": 1024**2}


def _quantity_kib(value: str) -> float:
    for suffix, factor in _MEMORY_UNITS.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    raise AssertionError(f"memory quantity {value!r}: use Ki, Mi or Gi")


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------- cross-reference checks


def check_image_tag(m: Manifests) -> None:
    """The image is what ``make image`` tags: pgtls-proxy:<pyproject version>."""
    assert m.container["image"] == f"pgtls-proxy:{_project_version()}"


def check_replicas(m: Manifests) -> None:
    assert m.deployment["spec"]["replicas"] == 3


def check_config_mount(m: Manifests) -> None:
    """--config names a key of the ConfigMap, in its directory mount (subPath gets no updates)."""
    mount, volume = m.mount_of("configMap")
    assert posixpath.dirname(m.config_path) == mount["mountPath"]
    assert "subPath" not in mount
    assert mount.get("readOnly") is True
    assert posixpath.basename(m.config_path) in m.configmap["data"]
    assert volume["configMap"]["name"] == m.configmap["metadata"]["name"]


def check_probes(m: Manifests) -> None:
    """/readyz for readiness, /healthz for liveness, on the metrics port, which all hosts reach."""
    metrics = m.config.metrics.address
    assert metrics is not None, "metrics.address is null: the probes have nothing to reach"
    host = ipaddress.ip_address(metrics.host)
    assert host.is_unspecified, f"metrics.address {metrics}: the kubelet cannot reach it"
    probes = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in probes.items():
        get = m.container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert m.container_port(get["port"]) == metrics.port, probe


def check_container_ports(m: Manifests) -> None:
    """The container declares the config's listen port and metrics port, under these names."""
    listen = {item.address.port for item in m.config.listen}
    assert listen == {m.container_port("postgres")}
    assert m.config.metrics.address is not None
    assert m.container_port("metrics") == m.config.metrics.address.port


def check_grace_period(m: Manifests) -> None:
    """The kubelet's SIGKILL comes after the preStop wait and a full drain."""
    grace = m.pod["terminationGracePeriodSeconds"]
    pre_stop = m.container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
    assert grace > pre_stop.get("seconds", 0) + m.config.shutdown.drain_timeout


def check_workers(m: Manifests) -> None:
    """``workers`` is written out and equals the CPU limit (the default counts the node's CPUs)."""
    assert "workers" in m.config_data
    limit = _quantity_millicores(m.container["resources"]["limits"]["cpu"])
    assert m.config.workers * 1000 == limit


def check_memory(m: Manifests) -> None:
    """The memory request covers the measured footprint at the config's max_connections."""
    resources = m.container["resources"]
    request = _quantity_kib(resources["requests"]["memory"])
    limit = _quantity_kib(resources["limits"]["memory"])
    needed = MEASURED_IDLE_KIB + m.config.limits.max_connections * MEASURED_KIB_PER_SESSION
    assert request >= needed, f"request {request} KiB < {needed:.0f} KiB measured"
    assert limit >= request
    assert _quantity_millicores(resources["requests"]["cpu"]) <= _quantity_millicores(
        resources["limits"]["cpu"]
    )


def check_secret_files(m: Manifests) -> None:
    """Every file the config reads is a key of the Secret, and every key is read."""
    mount, volume = m.mount_of("secret")
    assert volume["secret"]["secretName"] == m.secret["metadata"]["name"]
    assert "items" not in volume["secret"], "items would hide keys added later"
    assert mount.get("readOnly") is True
    named = set()
    for path in watched_files(m.config):
        assert str(path.parent) == mount["mountPath"], f"{path} is not in the Secret"
        named.add(path.name)
    assert named == m.secret_keys


def effective_mode(default_mode: int, fs_group: int | None) -> tuple[int, int]:
    """(mode, group) of a Secret volume's files: the kubelet's rule, from its source.

    kubernetes pkg/volume/volume_linux.go (changeFilePermission): with an
    fsGroup, every file of a read-only volume (a Secret is one) is chowned to
    group fsGroup and chmod'ed to its mode | 0440. The owner stays root.
    """
    if fs_group is None:
        return default_mode, 0
    return default_mode | KUBELET_FSGROUP_READONLY_BITS, fs_group


def check_secret_modes(m: Manifests) -> None:
    """The key ends up private by the proxy's rule, yet readable by the pod's user.

    The proxy (like PostgreSQL) accepts a root-owned key of mode 0640 or
    stricter; the process runs as runAsUser/runAsGroup with fsGroup among its
    groups.
    """
    _, volume = m.mount_of("secret")
    mode, group = effective_mode(
        volume["secret"]["defaultMode"], m.pod["securityContext"].get("fsGroup")
    )
    assert mode & ~0o640 & 0o077 == 0, f"mode {mode:04o}: group write or others"
    assert mode & 0o040, f"mode {mode:04o}: the group cannot read"
    context = m.pod["securityContext"]
    assert group in {context.get("runAsGroup"), context.get("fsGroup")} and group != 0


def check_security_context(m: Manifests) -> None:
    """Non-root (the image's user), read-only root, no capabilities, no escalation, seccomp."""
    uid, gid = _dockerfile_user()
    pod = m.pod["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == uid and pod["runAsGroup"] == gid
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = m.container["securityContext"]
    assert container["runAsNonRoot"] is True
    assert container.get("runAsUser", uid) == uid
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert not container["capabilities"].get("add")
    assert container.get("seccompProfile", pod["seccompProfile"]) == {"type": "RuntimeDefault"}
    assert container.get("privileged", False) is False
    assert m.pod.get("automountServiceAccountToken") is False
    # The read-only root needs a writable /tmp for the supervisor's run directory.
    tmp = [mount for mount in m.container["volumeMounts"] if mount["mountPath"] == "/tmp"]
    assert len(tmp) == 1 and "emptyDir" in m.volume(tmp[0]["name"])


def check_services(m: Manifests) -> None:
    """Selectors select the pods; target ports exist; the client Service exposes only 6432."""
    deployment_selector = m.deployment["spec"]["selector"]["matchLabels"]
    assert _selects(deployment_selector, m.pod_labels)
    listen = m.container_port("postgres")
    for service in m.services():
        assert _selects(service["spec"]["selector"], m.pod_labels), service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            m.container_port(port["targetPort"])  # names a container port
    clients = m.find("Service", "pgtls-proxy")["spec"]
    assert [m.container_port(p["targetPort"]) for p in clients["ports"]] == [listen]
    assert clients.get("clusterIP") != "None"
    peers = m.find("Service", "pgtls-proxy-peers")["spec"]
    assert peers.get("clusterIP") == "None"
    assert peers.get("publishNotReadyAddresses") is True
    assert listen in {m.container_port(p["targetPort"]) for p in peers["ports"]}


def check_disruption_budget(m: Manifests) -> None:
    pdb = m.find("PodDisruptionBudget")["spec"]
    assert _selects(pdb["selector"]["matchLabels"], m.pod_labels)
    assert 1 <= pdb["maxUnavailable"] < m.deployment["spec"]["replicas"]


def check_network_policy(m: Manifests) -> None:
    """Clients reach the listen port; only the monitoring namespace reaches the metrics port."""
    policy = m.find("NetworkPolicy")["spec"]
    assert _selects(policy["podSelector"]["matchLabels"], m.pod_labels)
    assert "Ingress" in policy["policyTypes"]
    assert m.config.metrics.address is not None
    metrics = m.config.metrics.address.port
    listen = m.container_port("postgres")
    open_ports: set[int] = set()
    metrics_rules = []
    for rule in policy["ingress"]:
        ports = {m.container_port(p["port"]) for p in rule.get("ports", [])}
        assert ports, "a rule without ports opens every port"
        if metrics in ports:
            metrics_rules.append(rule)
        if not rule.get("from"):
            open_ports |= ports
    assert listen in open_ports
    assert metrics not in open_ports
    assert metrics_rules, "no rule admits the metrics port"
    monitoring = {"kubernetes.io/metadata.name": MONITORING_NAMESPACE}
    for rule in metrics_rules:
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"}, peer
            assert peer["namespaceSelector"] == {"matchLabels": monitoring}
        named = [p["port"] for p in rule["ports"] if m.container_port(p["port"]) == metrics]
        assert named == ["metrics"]


CHECKS: list[Callable[[Manifests], None]] = [
    check_image_tag,
    check_replicas,
    check_config_mount,
    check_probes,
    check_container_ports,
    check_grace_period,
    check_workers,
    check_memory,
    check_secret_files,
    check_secret_modes,
    check_security_context,
    check_services,
    check_disruption_budget,
    check_network_policy,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_base_passes(manifests: Manifests, check: Callable[[Manifests], None]) -> None:
    check(manifests)


# ---------------------------------------------------------------- each check can fail


def _set_metrics(address: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["metrics"]["address"] = address

    return change


def _set_config(section: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data.setdefault(section, {})[key] = value

    return change


def _container(m: Manifests) -> dict[str, Any]:
    return m.container


def _port(m: Manifests, name: str) -> dict[str, Any]:
    (found,) = [p for p in m.container["ports"] if p["name"] == name]
    return found


def _metrics_rule(m: Manifests) -> dict[str, Any]:
    (rule,) = [r for r in m.find("NetworkPolicy")["spec"]["ingress"] if r.get("from") is not None]
    return rule


def _drop_crl_key(m: Manifests) -> None:
    del m.secret["stringData"]["crl.pem"]


def _extra_crl(m: Manifests) -> None:
    m.edit_config(lambda d: d["tls"]["crl_files"].append("/etc/pgtls-proxy/crl/other.pem"))


BREAKAGES: list[tuple[str, Callable[[Manifests], None], Callable[[Manifests], None]]] = [
    ("latest tag", lambda m: _container(m).update(image="pgtls-proxy:latest"), check_image_tag),
    ("one replica", lambda m: m.deployment["spec"].update(replicas=1), check_replicas),
    (
        "config outside the mount",
        lambda m: _container(m).update(args=["run", "--config", "/etc/pgtls-proxy/p.yaml"]),
        check_config_mount,
    ),
    (
        "config by subPath",
        lambda m: m.mount_of("configMap")[0].update(subPath="pgtls-proxy.yaml"),
        check_config_mount,
    ),
    (
        "readiness on /healthz",
        lambda m: _container(m)["readinessProbe"]["httpGet"].update(path="/healthz"),
        check_probes,
    ),
    (
        "liveness on the postgres port",
        lambda m: _container(m)["livenessProbe"]["httpGet"].update(port="postgres"),
        check_probes,
    ),
    (
        "readiness on another number",
        lambda m: _container(m)["readinessProbe"]["httpGet"].update(port=9188),
        check_probes,
    ),
    (
        "metrics on loopback",
        lambda m: m.edit_config(_set_metrics("127.0.0.1:9187")),
        check_probes,
    ),
    ("metrics moved", lambda m: m.edit_config(_set_metrics("0.0.0.0:9188")), check_probes),
    ("metrics off", lambda m: m.edit_config(_set_metrics(None)), check_probes),
    (
        "container port not the listen port",
        lambda m: _port(m, "postgres").update(containerPort=5432),
        check_container_ports,
    ),
    (
        "listen port moved",
        lambda m: m.edit_config(lambda d: d["listen"][0].update(address="0.0.0.0:6433")),
        check_container_ports,
    ),
    (
        "grace period within the drain",
        lambda m: m.pod.update(terminationGracePeriodSeconds=30),
        check_grace_period,
    ),
    (
        "drain longer than the grace period",
        lambda m: m.edit_config(_set_config("shutdown", "drain_timeout", 60)),
        check_grace_period,
    ),
    (
        "preStop wait eats the drain",
        lambda m: _container(m)["lifecycle"]["preStop"]["sleep"].update(seconds=15),
        check_grace_period,
    ),
    (
        "workers left to the CPU count",
        lambda m: m.edit_config(lambda d: d.pop("workers")),
        check_workers,
    ),
    (
        "workers above the CPU limit",
        lambda m: m.edit_config(lambda d: d.update(workers=4)),
        check_workers,
    ),
    (
        "CPU limit above workers",
        lambda m: _container(m)["resources"]["limits"].update(cpu="4"),
        check_workers,
    ),
    (
        "max_connections beyond the memory",
        lambda m: m.edit_config(_set_config("limits", "max_connections", 10000)),
        check_memory,
    ),
    (
        "memory request below the measurement",
        lambda m: _container(m)["resources"]["requests"].update(memory="128Mi"),
        check_memory,
    ),
    (
        "memory limit below the request",
        lambda m: _container(m)["resources"]["limits"].update(memory="200Mi"),
        check_memory,
    ),
    ("a named file missing from the Secret", _drop_crl_key, check_secret_files),
    ("a file outside the Secret", _extra_crl, check_secret_files),
    (
        "another Secret mounted",
        lambda m: m.mount_of("secret")[1]["secret"].update(secretName="tls"),
        check_secret_files,
    ),
    (
        "items select keys",
        lambda m: m.mount_of("secret")[1]["secret"].update(
            items=[{"key": "server.key", "path": "server.key"}]
        ),
        check_secret_files,
    ),
    (
        "key readable by others",
        lambda m: m.mount_of("secret")[1]["secret"].update(defaultMode=0o444),
        check_secret_modes,
    ),
    (
        "key group-writable",
        lambda m: m.mount_of("secret")[1]["secret"].update(defaultMode=0o660),
        check_secret_modes,
    ),
    (
        "no fsGroup: root-only key",
        lambda m: m.pod["securityContext"].pop("fsGroup"),
        check_secret_modes,
    ),
    (
        "runs as root",
        lambda m: m.pod["securityContext"].update(runAsNonRoot=False, runAsUser=0),
        check_security_context,
    ),
    (
        "another uid than the image's",
        lambda m: m.pod["securityContext"].update(runAsUser=1000),
        check_security_context,
    ),
    (
        "writable root",
        lambda m: _container(m)["securityContext"].update(readOnlyRootFilesystem=False),
        check_security_context,
    ),
    (
        "privilege escalation",
        lambda m: _container(m)["securityContext"].update(allowPrivilegeEscalation=True),
        check_security_context,
    ),
    (
        "capabilities kept",
        lambda m: _container(m)["securityContext"]["capabilities"].update(drop=["NET_RAW"]),
        check_security_context,
    ),
    (
        "capability added",
        lambda m: _container(m)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
        check_security_context,
    ),
    (
        "no seccomp",
        lambda m: m.pod["securityContext"].update(seccompProfile={"type": "Unconfined"}),
        check_security_context,
    ),
    (
        "no writable /tmp",
        lambda m: _container(m).update(
            volumeMounts=[v for v in _container(m)["volumeMounts"] if v["mountPath"] != "/tmp"]
        ),
        check_security_context,
    ),
    (
        "Service selects nothing",
        lambda m: m.find("Service", "pgtls-proxy")["spec"].update(selector={"app": "other"}),
        check_services,
    ),
    (
        "Service exposes metrics",
        lambda m: m.find("Service", "pgtls-proxy")["spec"]["ports"].append(
            {"name": "metrics", "port": 9187, "targetPort": "metrics"}
        ),
        check_services,
    ),
    (
        "Service targets a port the pod lacks",
        lambda m: m.find("Service", "pgtls-proxy-peers")["spec"]["ports"][0].update(
            targetPort="pg"
        ),
        check_services,
    ),
    (
        "peers Service not headless",
        lambda m: m.find("Service", "pgtls-proxy-peers")["spec"].pop("clusterIP"),
        check_services,
    ),
    (
        "peers Service hides draining pods",
        lambda m: m.find("Service", "pgtls-proxy-peers")["spec"].update(
            publishNotReadyAddresses=False
        ),
        check_services,
    ),
    (
        "PDB selects nothing",
        lambda m: m.find("PodDisruptionBudget")["spec"]["selector"].update(
            matchLabels={"app": "other"}
        ),
        check_disruption_budget,
    ),
    (
        "PDB lets every pod go",
        lambda m: m.find("PodDisruptionBudget")["spec"].update(maxUnavailable=3),
        check_disruption_budget,
    ),
    (
        "metrics open to all",
        lambda m: _metrics_rule(m).pop("from"),
        check_network_policy,
    ),
    (
        "metrics open to another namespace",
        lambda m: _metrics_rule(m)["from"][0]["namespaceSelector"].update(
            matchLabels={"kubernetes.io/metadata.name": "default"}
        ),
        check_network_policy,
    ),
    (
        "metrics open to every namespace",
        lambda m: _metrics_rule(m)["from"][0].update(namespaceSelector={}),
        check_network_policy,
    ),
    (
        "policy names another metrics port",
        lambda m: _metrics_rule(m)["ports"][0].update(port=9090),
        check_network_policy,
    ),
    (
        "policy for other pods",
        lambda m: m.find("NetworkPolicy")["spec"]["podSelector"].update(
            matchLabels={"app": "other"}
        ),
        check_network_policy,
    ),
    (
        "clients shut out",
        lambda m: m.find("NetworkPolicy")["spec"].update(ingress=[_metrics_rule(m)]),
        check_network_policy,
    ),
]


@pytest.mark.parametrize(
    ("mutate", "check"),
    [pytest.param(mutate, check, id=name) for name, mutate, check in BREAKAGES],
)
def test_each_check_catches_what_it_guards_against(
    manifests: Manifests,
    mutate: Callable[[Manifests], None],
    check: Callable[[Manifests], None],
) -> None:
    check(manifests)
    broken = manifests.copy()
    mutate(broken)
    with pytest.raises((AssertionError, ValueError)):
        check(broken)


def test_every_check_has_a_breakage() -> None:
    assert {check for _, _, check in BREAKAGES} == set(CHECKS)


# ---------------------------------------------------------------- schemas and rendering


def _schema_version() -> str:
    return str(kubernetes_validate.latest_version())


def test_every_object_is_valid_for_a_current_kubernetes(manifests: Manifests) -> None:
    """Strict schemas: wrong types, missing fields and unknown (misspelt) fields all fail."""
    version = _schema_version()
    assert tuple(int(x) for x in version.split(".")[:2]) >= (1, 34)
    for obj in [*manifests.objects, manifests.secret]:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_check_rejects_a_misspelt_field(manifests: Manifests) -> None:
    broken = manifests.copy()
    container = broken.container
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken.deployment, _schema_version(), strict=True)


def test_the_base_applies_without_custom_resources(manifests: Manifests) -> None:
    """Core kinds only, and no Secret: applying a placeholder would overwrite the real keys."""
    kinds = sorted(_key(o) for o in manifests.objects)
    assert {(o["apiVersion"], o["kind"]) for o in manifests.objects} <= BASE_KINDS
    assert kinds == sorted(
        [
            ("ConfigMap", "pgtls-proxy-config"),
            ("Deployment", "pgtls-proxy"),
            ("NetworkPolicy", "pgtls-proxy"),
            ("PodDisruptionBudget", "pgtls-proxy"),
            ("Service", "pgtls-proxy"),
            ("Service", "pgtls-proxy-peers"),
        ]
    )


def test_the_example_secret_holds_no_key_material() -> None:
    text = SECRET_EXAMPLE.read_text()
    assert "-----BEGIN" not in text
    (secret,) = _load_documents(SECRET_EXAMPLE)
    assert "data" not in secret


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_the_python_rendering_is_what_kubectl_renders(tmp_path: Path) -> None:
    """Where kubectl exists, the fallback renderer is held to its output."""
    for directory in (BASE, overlay_with_component(tmp_path)):
        ours = sorted(render_kustomization(directory), key=_key)
        theirs = sorted(kubectl_kustomize(directory), key=_key)
        assert ours == theirs


def test_the_fallback_renderer_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{os.path.relpath(BASE, tmp_path)}]\nnamespace: db\n"
    )
    with pytest.raises(NotImplementedError, match="namespace"):
        render_kustomization(tmp_path)


# ---------------------------------------------------------------- Prometheus Operator component


def _render_rule_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_prometheusrule", RULE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prometheusrule_is_generated_from_alerts_yml() -> None:
    module = _render_rule_module()
    committed = (COMPONENT / "prometheusrule.yaml").read_text(encoding="utf-8")
    assert committed == module.render(ALERTS.read_text(encoding="utf-8")), (
        "run python3 scripts/render_prometheusrule.py"
    )
    assert yaml.safe_load(committed)["spec"] == yaml.safe_load(ALERTS.read_text())


def test_the_prometheusrule_changes_when_alerts_yml_does() -> None:
    module = _render_rule_module()
    text = ALERTS.read_text(encoding="utf-8").replace("for: 15m", "for: 16m", 1)
    assert module.render(text) != (COMPONENT / "prometheusrule.yaml").read_text(encoding="utf-8")


def test_the_component_scrapes_every_pod_on_the_metrics_port(
    manifests: Manifests, tmp_path: Path
) -> None:
    objects = render(overlay_with_component(tmp_path))
    extra = [o for o in objects if _key(o) not in {_key(b) for b in manifests.objects}]
    assert sorted(_key(o) for o in extra) == [
        ("PrometheusRule", "pgtls-proxy"),
        ("ServiceMonitor", "pgtls-proxy"),
    ]
    (monitor,) = [o for o in extra if o["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [
        s
        for s in manifests.services()
        if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in selected] == ["pgtls-proxy-peers"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    (port,) = [p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert manifests.config.metrics.address is not None
    assert manifests.container_port(port["targetPort"]) == manifests.config.metrics.address.port
    (rule,) = [o for o in extra if o["kind"] == "PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    for group in rule["spec"]["groups"]:
        for item in group["rules"]:
            assert item["expr"] and ("alert" in item or "record" in item)


# ---------------------------------------------------------------- the pod's files, for real


def write_kubelet_volume(target: Path, files: dict[str, bytes], mode: int, group: int) -> None:
    """Lay out files as the kubelet's atomic writer does for a Secret volume.

    The data sits in a timestamped directory, ``..data`` links to it, and each
    key is a link ``KEY -> ..data/KEY``; an update writes a new directory,
    renames a new ``..data`` link over the old one and removes the old
    directory (kubernetes pkg/volume/util/atomic_writer.go).
    """
    target.mkdir(mode=0o755, exist_ok=True)
    stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.%f")
    data_dir = target / stamp
    data_dir.mkdir(mode=0o755)
    os.chown(data_dir, 0, group)
    for name, content in files.items():
        path = data_dir / name
        path.write_bytes(content)
        os.chown(path, 0, group)
        path.chmod(mode)
    previous = os.readlink(target / "..data") if (target / "..data").is_symlink() else None
    link = target / "..data_tmp"
    link.symlink_to(stamp)
    link.replace(target / "..data")
    for name in files:
        if not (target / name).is_symlink():
            (target / name).symlink_to(f"..data/{name}")
    if previous is not None:
        shutil.rmtree(target / previous)


def _secret_files(pki: PKIFiles) -> dict[str, bytes]:
    sources = {
        "server.crt": pki.server_cert,
        "server.key": pki.server_key,
        "ca.crt": pki.ca,
        "crl.pem": pki.crl,
        "backend-ca.crt": pki.ca,
    }
    return {name: path.read_bytes() for name, path in sources.items()}


@pytest.fixture
def pod_root() -> Iterator[Path]:
    """A directory the pod's user can traverse (pytest's own tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="pgtls-k8s-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def materialise(m: Manifests, pki: PKIFiles, root: Path, **overrides: Any) -> Path:
    """The pod's config and Secret under ``root``; returns the config file's path.

    Paths under the Secret's mount are moved below ``root``; ``overrides``
    replace top-level config sections (the tests' addresses: loopback only).
    """
    mount, volume = m.mount_of("secret")
    mode, group = effective_mode(
        volume["secret"]["defaultMode"], m.pod["securityContext"].get("fsGroup")
    )
    tls_dir = root / mount["mountPath"].lstrip("/")
    tls_dir.parent.mkdir(parents=True, exist_ok=True)
    write_kubelet_volume(tls_dir, _secret_files(pki), mode, group)
    text = m.configmap["data"][posixpath.basename(m.config_path)]
    data = yaml.safe_load(text.replace(mount["mountPath"] + "/", f"{tls_dir}/"))
    for backend in data["backends"].values():
        backend["address"] = "127.0.0.1:1"  # loopback only; no test reaches a backend
    data.update(overrides)
    config_path = root / m.config_path.lstrip("/")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(data, sort_keys=False))
    for directory in [config_path.parent, *config_path.parent.parents]:
        if directory == root.parent:
            break
        directory.chmod(0o755)
    return config_path


def check_as_pod_user(m: Manifests, config_path: Path) -> list[str]:
    """``pgtls-proxy check`` findings as the pod's user, groups included.

    The check runs in a forked child that drops to runAsUser, runAsGroup and
    fsGroup, so file modes and ownership decide exactly as they would in the
    pod. (Running the CLI as that user is not possible here: the interpreter
    may live under root's home.) The parent runs it once first, so every
    module the check needs is imported before the child loses access.
    """
    from pgtls_proxy.check import run_checks

    run_checks(str(config_path))
    context = m.pod["securityContext"]
    groups = [g for g in (context.get("fsGroup"),) if g is not None]
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 0
        try:
            os.close(read_fd)
            os.setgroups(groups)
            os.setgid(context["runAsGroup"])
            os.setuid(context["runAsUser"])
            lines = run_checks(str(config_path))
            os.write(write_fd, json.dumps(lines).encode())
        except BaseException as exc:
            os.write(write_fd, json.dumps([f"child: {exc!r}"]).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    output = b""
    deadline = time.monotonic() + 60
    with os.fdopen(read_fd, "rb", buffering=0) as fh:
        while True:
            ready, _, _ = select.select([fh], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("check as the pod user did not finish within 60 s")
            chunk = fh.read(65536)
            if not chunk:
                break
            output += chunk
    os.waitpid(pid, 0)
    lines: list[str] = json.loads(output)
    return lines


root_only = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to give files root:fsGroup and to switch users"
)

_LOOPBACK = {
    "listen": [{"address": "127.0.0.1:0"}],
    "metrics": {"address": "127.0.0.1:0"},
}


@root_only
def test_the_secret_as_the_kubelet_mounts_it_passes_check_as_the_pod_user(
    manifests: Manifests, pki: PKIFiles, pod_root: Path
) -> None:
    config_path = materialise(manifests, pki, pod_root, **_LOOPBACK)
    key = pod_root / "etc/pgtls-proxy/tls/server.key"
    st = key.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 10001, 0o440)
    assert check_as_pod_user(manifests, config_path) == []


@root_only
def test_without_fsgroup_the_pod_user_cannot_read_the_key(
    manifests: Manifests, pki: PKIFiles, pod_root: Path
) -> None:
    broken = manifests.copy()
    broken.pod["securityContext"].pop("fsGroup")
    config_path = materialise(broken, pki, pod_root, **_LOOPBACK)
    findings = check_as_pod_user(broken, config_path)
    assert any(
        line.startswith("error: tls.key_file:") and "permission denied" in line for line in findings
    ), findings


@root_only
def test_a_world_readable_key_is_refused_by_check(
    manifests: Manifests, pki: PKIFiles, pod_root: Path
) -> None:
    broken = manifests.copy()
    broken.mount_of("secret")[1]["secret"]["defaultMode"] = 0o444
    config_path = materialise(broken, pki, pod_root, **_LOOPBACK)
    findings = check_as_pod_user(broken, config_path)
    assert any(
        line.startswith("error: tls.key_file:") and "readable by group or others" in line
        for line in findings
    ), findings


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@root_only
def test_the_pods_config_starts_and_answers_its_probes(
    manifests: Manifests, pki: PKIFiles, pod_root: Path
) -> None:
    """The ConfigMap's config, with the Secret in the kubelet's layout, runs; the probes answer.

    Only the addresses change (the tests listen on loopback) and the log
    format (the fixture reads text lines).
    """
    config_path = materialise(manifests, pki, pod_root, **_LOOPBACK, logging={"format": "text"})
    data = yaml.safe_load(config_path.read_text())
    daemon = Daemon(config_path, data)
    try:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            path = manifests.container[probe]["httpGet"]["path"]
            assert _get(daemon.metrics_port, path) == 200, probe
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0


def _served_certificate(port: int, pki: PKIFiles) -> bytes:
    """The server certificate (DER) of one direct-TLS handshake with a client certificate."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False
    context.set_alpn_protocols(["postgresql"])
    context.load_cert_chain(*pki.client("alice"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


@root_only
def test_a_certificate_rotated_through_the_secret_reaches_new_handshakes(
    manifests: Manifests, pki: PKIFiles, pod_root: Path
) -> None:
    """The kubelet's ``..data`` swap of the Secret is seen by the file watcher, without SIGHUP.

    A new server certificate and key are written the way the kubelet updates
    a Secret volume (new directory, ``..data`` renamed over, old directory
    removed); within 5 seconds (the bound docs/reference.md states) every worker serves the new
    certificate.
    """
    config_path = materialise(manifests, pki, pod_root, **_LOOPBACK, logging={"format": "text"})
    daemon = Daemon(config_path, yaml.safe_load(config_path.read_text()))
    try:
        old = _served_certificate(daemon.port, pki)
        issuer = pod_root / "issuer"
        issuer.mkdir()
        for name in ("ca.crt", "ca.key", "crl.pem"):
            shutil.copy2(pki.dir / name, issuer / name)
        cert, key = authority.issue_server(issuer, "localhost", ["IP:127.0.0.1"])
        files = _secret_files(pki) | {
            "server.crt": cert.read_bytes(),
            "server.key": key.read_bytes(),
        }
        mount, volume = manifests.mount_of("secret")
        mode, group = effective_mode(
            volume["secret"]["defaultMode"], manifests.pod["securityContext"]["fsGroup"]
        )
        tls_dir = pod_root / mount["mountPath"].lstrip("/")
        write_kubelet_volume(tls_dir, files, mode, group)
        new = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
        assert new != old
        # Each worker polls on its own: wait until a run of handshakes (which
        # land on either worker) is all new, then check once more.
        deadline = time.monotonic() + 5
        run = 0
        while run < 10:
            assert time.monotonic() < deadline, "a worker still serves the old certificate"
            run = run + 1 if _served_certificate(daemon.port, pki) == new else 0
            if run == 0:
                time.sleep(0.1)
        served = {_served_certificate(daemon.port, pki) for _ in range(20)}
        assert served == {new}
        assert _get(daemon.metrics_port, "/readyz") == 200
    finally:
        daemon.stop()
