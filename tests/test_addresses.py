"""One spelling of an address for the listener's config errors and the client's audit record."""

from __future__ import annotations

from pgtls_proxy.addresses import format_addr, host_port
from pgtls_proxy.config import HostPort


def test_ipv6_hosts_are_bracketed_in_both_places() -> None:
    assert host_port("::1", 6432) == "[::1]:6432"
    assert str(HostPort("::1", 6432)) == format_addr(("::1", 6432, 0, 0)) == "[::1]:6432"
    assert str(HostPort("127.0.0.1", 5432)) == format_addr(("127.0.0.1", 5432)) == "127.0.0.1:5432"


def test_a_unix_peer_without_a_name_is_local() -> None:
    assert format_addr("") == "local"
    assert format_addr("/run/x.sock") == "/run/x.sock"
