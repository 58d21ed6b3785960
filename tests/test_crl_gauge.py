"""The ``crl_next_update`` gauge: published when a TLS state is installed.

pki/ computes each issuer's latest ``nextUpdate``; the runtime publishes it,
so the policy package never touches the metrics library.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry

from pgtls_proxy.config import TLSSettings
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.pki.revocation import RevocationChecker, load_revocation
from pgtls_proxy.runtime import Runtime, Snapshot
from tests.fixtures.chain_pki import ChainPKI


@dataclass
class _Config:
    backends: dict[str, Any] = field(default_factory=dict)


@dataclass
class _State:
    """The parts of a Snapshot that ``Runtime.install`` reads."""

    revocation: RevocationChecker
    config: _Config = field(default_factory=_Config)
    server_cert_not_after: dt.datetime = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def _revocation(pki: ChainPKI, crls: tuple[Path, ...]) -> RevocationChecker:
    cert, key = pki.server
    tls = TLSSettings(
        cert_file=cert,
        key_file=key,
        client_ca_file=pki.bundle,
        revocation="lenient",
        crl_files=crls,
    )
    return load_revocation(tls, [pki.root.cert, pki.inter.cert, pki.inter2.cert])


def _published(metrics: Metrics) -> dict[str, float]:
    [family] = metrics.crl_next_update.collect()
    return {sample.labels["issuer"]: sample.value for sample in family.samples}


def test_install_publishes_each_issuers_next_update_and_drops_gone_ones(
    chain_pki: ChainPKI, tmp_path: Path
) -> None:
    both = _revocation(
        chain_pki,
        (
            chain_pki.write_crl(tmp_path / "root.pem", chain_pki.root),
            chain_pki.write_crl(tmp_path / "inter.pem", chain_pki.inter),
        ),
    )
    metrics = Metrics(CollectorRegistry())
    rt = Runtime(state=cast(Snapshot, _State(both)), metrics=metrics)
    rt.install(cast(Snapshot, _State(both)))
    published = _published(metrics)
    assert set(published) == {"CN=Test Root", "CN=Test Intermediate"}
    root_next = both.next_updates()["CN=Test Root"]
    assert published["CN=Test Root"] == root_next.timestamp()

    # A reload whose files no longer hold the intermediate's CRL drops its series.
    root_only = _revocation(chain_pki, (tmp_path / "root.pem",))
    rt.install(cast(Snapshot, _State(root_only)))
    assert set(_published(metrics)) == {"CN=Test Root"}
