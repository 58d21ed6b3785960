"""``pgtls-proxy check``: validate a config and every file it names.

Each finding is one line, ``error: <key path>: <what>`` or
``warning: <key path>: <what>``, so scripts can grep and operators can go to
the key.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pgtls_proxy.config import ConfigError, load_config
from pgtls_proxy.pki.contexts import TLSConfigError
from pgtls_proxy.runtime import build_state

EXPIRY_WARNING_DAYS = 30


def run_checks(path: str, now: datetime | None = None) -> list[str]:
    """Return the findings for the config at ``path`` (empty when all is well)."""
    now = now or datetime.now(UTC)
    try:
        config = load_config(path)
    except ConfigError as exc:
        return [f"error: {exc.key or 'config'}: {exc.message}"]
    findings: list[str] = []
    try:
        state = build_state(config)
    except (ConfigError, TLSConfigError) as exc:
        return [f"error: {exc.key}: {exc.message}"]
    except (OSError, ValueError) as exc:
        return [f"error: tls.cert_file: {exc}"]
    left = state.server_cert_not_after - now
    if left.total_seconds() <= 0:
        findings.append(
            f"error: tls.cert_file: certificate expired on {state.server_cert_not_after:%Y-%m-%d}"
        )
    elif left.days < EXPIRY_WARNING_DAYS:
        findings.append(
            f"warning: tls.cert_file: certificate expires in {left.days} days "
            f"({state.server_cert_not_after:%Y-%m-%d})"
        )
    return findings
