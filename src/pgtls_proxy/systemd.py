"""The process's side of systemd: notifications, the watchdog and the signal loop.

Both process shapes use these: a single proxy process, and the supervisor
of ``workers: N`` (its workers run without ``NOTIFY_SOCKET``, so for them
:func:`sd_notify` does nothing and only the supervisor talks to systemd).
The signal loop is here because its SIGHUP half is systemd's
``Type=notify-reload`` protocol (``RELOADING=1`` … ``READY=1``).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import trio

from pgtls_proxy.logsetup import LOGGER_NAME

_log = logging.getLogger(f"{LOGGER_NAME}.server")


def sd_notify(message: str) -> None:
    """Send a systemd notification datagram when NOTIFY_SOCKET is set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError as exc:
        _log.warning("P: cannot notify systemd: %s", exc)


async def watchdog(alive: Callable[[], bool] = lambda: True) -> None:
    """Ping systemd's watchdog at half its interval while the loop runs and ``alive()``.

    Returns at once when systemd set no watchdog for this process.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return
    interval = int(usec) / 2_000_000
    while True:
        if alive():
            sd_notify("WATCHDOG=1")
        await trio.sleep(interval)


async def handle_signals(on_reload: Callable[[], object], on_stop: Callable[[int], None]) -> None:
    """Run the process's signal loop until cancelled.

    SIGHUP calls ``on_reload`` between systemd's ``RELOADING=1`` and
    ``READY=1``; SIGTERM and SIGINT call ``on_stop`` with the signal number
    (every time: a second stop signal may mean "now").
    """
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
                on_reload()
                sd_notify("READY=1")
            else:
                on_stop(signum)
