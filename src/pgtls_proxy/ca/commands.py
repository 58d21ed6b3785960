"""``pgtls-proxy pki ...``: argparse wiring for the file-based CA.

Handlers print one line naming what they wrote, so scripts can log it, and
turn operator mistakes into ``error: ...`` plus exit status 1 instead of a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from pgtls_proxy.ca import authority
from pgtls_proxy.ca.authority import AuthorityError

Handler = Callable[[argparse.Namespace], int]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _guarded(func: Handler) -> Handler:
    """Report expected failures on one stderr line with status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except AuthorityError as exc:
            print(f"error: {exc}", file=sys.stderr)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1

    return run


@_guarded
def _init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    authority.init_ca(directory, key_type=args.key_type, days=args.days)
    files = (authority.CA_CERT, authority.CA_KEY, authority.CRL_FILE)
    print("wrote " + " ".join(str(directory / name) for name in files))
    return 0


@_guarded
def _server(args: argparse.Namespace) -> int:
    cert, key = authority.issue_server(
        args.dir, args.name, args.san, key_type=args.key_type, days=args.days
    )
    print(f"wrote {cert} {key}")
    return 0


@_guarded
def _client(args: argparse.Namespace) -> int:
    cert, key = authority.issue_client(
        args.dir, args.cn, days=args.days, key_type=args.key_type, sans=args.san
    )
    print(f"wrote {cert} {key}")
    return 0


@_guarded
def _revoke(args: argparse.Namespace) -> int:
    serial = authority.revoke(args.dir, args.certfile, crl_days=args.crl_days)
    print(f"revoked serial {serial:x}; wrote {Path(args.dir) / authority.CRL_FILE}")
    return 0


@_guarded
def _crl(args: argparse.Namespace) -> int:
    authority.refresh_crl(args.dir, crl_days=args.crl_days)
    print(f"wrote {Path(args.dir) / authority.CRL_FILE}")
    return 0


def _key_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-type",
        choices=("ec", "rsa"),
        default="ec",
        help="ec = P-256 (default), rsa = RSA 3072",
    )


def _days(parser: argparse.ArgumentParser, default: int) -> None:
    parser.add_argument(
        "--days",
        type=_positive_int,
        default=default,
        metavar="N",
        help=f"validity in days (default {default})",
    )


def _crl_days(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--crl-days",
        type=_positive_int,
        default=30,
        metavar="N",
        help="days until the CRL's nextUpdate (default 30); re-run 'pki crl' before then",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``pki`` and its sub-commands; each sets ``func`` to an ``(args) -> int``."""
    pki = subparsers.add_parser(
        "pki",
        help="a minimal certificate authority for the proxy and its clients",
        description="Create a CA, issue server and client certificates, maintain the CRL.",
    )
    sub = pki.add_subparsers(dest="pki_command", metavar="COMMAND", required=True)

    init = sub.add_parser("init", help="create DIR/ca.crt, DIR/ca.key and an empty DIR/crl.pem")
    init.add_argument("dir", metavar="DIR")
    _key_type(init)
    _days(init, 3650)
    init.set_defaults(func=_init)

    server = sub.add_parser("server", help="issue DIR/NAME.crt and DIR/NAME.key for a server")
    server.add_argument("dir", metavar="DIR")
    server.add_argument("name", metavar="NAME", help="host name: the CN and a DNS SAN")
    server.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="SAN",
        help="extra subject alternative name: DNS:name, IP:address or a bare value",
    )
    _key_type(server)
    _days(server, 825)
    server.set_defaults(func=_server)

    client = sub.add_parser("client", help="issue DIR/CN.crt and DIR/CN.key for a client")
    client.add_argument("dir", metavar="DIR")
    client.add_argument("cn", metavar="CN", help="the certificate's common name")
    client.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="SAN",
        help="subject alternative name: DNS:, IP:, email: or URI: (e.g. URI:spiffe://...)",
    )
    _key_type(client)
    _days(client, 365)
    client.set_defaults(func=_client)

    revoke = sub.add_parser("revoke", help="add CERTFILE to DIR/crl.pem")
    revoke.add_argument("dir", metavar="DIR")
    revoke.add_argument("certfile", metavar="CERTFILE")
    _crl_days(revoke)
    revoke.set_defaults(func=_revoke)

    crl = sub.add_parser("crl", help="re-sign DIR/crl.pem with a fresh nextUpdate")
    crl.add_argument("dir", metavar="DIR")
    _crl_days(crl)
    crl.set_defaults(func=_crl)
