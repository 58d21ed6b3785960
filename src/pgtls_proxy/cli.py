"""Command line: ``pgtls-proxy run | check | pki … | demo | --version``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import trio

from pgtls_proxy import __version__
from pgtls_proxy.ca import commands as pki_commands
from pgtls_proxy.config import Config, default_config_path, load_config
from pgtls_proxy.errors import KeyPathError
from pgtls_proxy.logsetup import LOGGER_NAME, escape, route_process_output, setup_logging
from pgtls_proxy.secretfiles import InsecureFileError


def _stop(reason: str) -> int:
    """Exit 2 with a one-line reason: a log record once logging is set up, else plain text."""
    if logging.getLogger(LOGGER_NAME).handlers:
        logging.getLogger(LOGGER_NAME).error("pgtls-proxy: %s", reason)
    else:
        print(f"pgtls-proxy: {escape(reason)}", file=sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    from pgtls_proxy.bundle import ENV_BUNDLE, Bundle, capture_from_disk
    from pgtls_proxy.server import Proxy
    from pgtls_proxy.supervisor import run_supervisor
    from pgtls_proxy.worker import worker_role

    try:
        role = worker_role()
        bundle = None
        if role is not None and os.environ.get(ENV_BUNDLE) == "stdin":
            # The supervisor's last good config and files, not what is on disk now.
            bundle = Bundle.decode(sys.stdin.buffer.read())
            config = bundle.parse()
        else:
            config = load_config(args.config)
        setup_logging(
            config.logging.level,
            config.logging.format,
            worker=role.worker_id if role is not None else None,
        )
        route_process_output()
        if role is None:  # workers inherit the raised limit
            _raise_descriptor_limit(config)
        if role is None and config.workers > 1:
            from pathlib import Path

            # A bad file must stop us before any worker starts; what loads
            # is what the workers start (and restart) from.
            bundle, state = capture_from_disk(Path(config.source or args.config))
            return run_supervisor(state.config, config.workers, bundle, state)
        proxy = Proxy(config, role=role, bundle=bundle)
    except InsecureFileError as exc:
        # One line in a fixed shape: "pgtls-proxy: <key path>: <file> is readable …",
        # a record of the configured log format once logging is set up.
        return _stop(str(exc))
    except KeyPathError as exc:
        return _stop(f"configuration error: {exc}")
    except OSError as exc:
        return _stop(f"cannot start: {exc}")
    try:
        trio.run(proxy.run)
    except OSError as exc:
        return _stop(f"cannot listen: {exc}")
    except KeyboardInterrupt:
        return 0
    return 0


def _raise_descriptor_limit(config: Config) -> None:
    """Take every descriptor the hard limit allows; say so when the limits need more."""
    from pgtls_proxy import descriptors

    soft, _hard = descriptors.raise_soft_limit()
    problem = descriptors.shortfall(config, soft)
    if problem is not None:
        ceiling = descriptors.pending_ceiling(config, soft)
        logging.getLogger(f"{LOGGER_NAME}.server").warning(
            "P: limits.max_connections: %s; until then limits.max_pending is lowered to %s",
            problem,
            ceiling,
        )


def _cmd_check(args: argparse.Namespace) -> int:
    from pgtls_proxy.check import Severity, find_problems

    findings = find_problems(args.config)
    for finding in findings:
        print(finding)
    return 1 if any(f.severity is Severity.ERROR for f in findings) else 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from pgtls_proxy.demo.run import run_demo

    return run_demo(port=args.port, keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgtls-proxy", description="A mutual-TLS front door for PostgreSQL."
    )
    parser.add_argument("--version", action="version", version=f"pgtls-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the proxy in the foreground")
    run.add_argument("--config", default=None, help="config file (default: $PGTLS_PROXY_CONFIG)")
    run.set_defaults(func=_cmd_run)

    check = sub.add_parser("check", help="validate the config and every file it names")
    check.add_argument("--config", default=None)
    check.set_defaults(func=_cmd_check)

    demo = sub.add_parser("demo", help="throwaway PKI + PostgreSQL + proxy, prints a psql line")
    demo.add_argument("--port", type=int, default=6432, help="proxy port (0 = any free port)")
    demo.add_argument("--keep", action="store_true", help="keep the temporary directory")
    demo.set_defaults(func=_cmd_demo)

    pki_commands.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    if hasattr(args, "config") and args.config is None:
        args.config = default_config_path()
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
