"""How a network address is written in logs, audit records and config errors.

One spelling everywhere: ``host:port``, an IPv6 host in brackets so its
colons do not run into the port's.
"""

from __future__ import annotations


def host_port(host: str, port: int) -> str:
    """``host:port``, or ``[host]:port`` for an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_addr(addr: tuple[str, int] | tuple[str, int, int, int] | str) -> str:
    """A socket's peer address: an (IPv4 or IPv6) tuple, or a Unix socket's path."""
    if isinstance(addr, str):
        return addr or "local"
    return host_port(addr[0], addr[1])
