"""File descriptors: how many the limits need, and how many the process may have.

Every session holds two (client and backend), every pending connection one,
every listener and idle pooled backend session one, plus a fixed slack for
logs, the metrics files, epoll, the cancel socket and the spare descriptor
kept for shedding connections when accept fails. The counts are per worker
process, as are the limits.
"""

from __future__ import annotations

import resource

from pgtls_proxy.config import Config

# Logs, epoll, wake-up pipes, metric files, the cancel hand-off socket,
# the reserve descriptor, the admin endpoint, CA/CRL files being read.
SLACK = 64
# Fewer pending connections than this is no service at all.
MIN_PENDING = 16


def raise_soft_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one; return (soft, hard) after.

    An unlimited hard limit is not a valid soft limit for descriptors; the
    kernel's per-process maximum (fs.nr_open) is used instead.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        target = _nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1 << 20


def fixed_need(config: Config) -> int:
    """Descriptors held whatever the traffic: listeners, pooled sessions, slack."""
    pooled = sum(backend.pool.size for backend in config.backends.values())
    return len(config.listen) + pooled + SLACK


def needed(config: Config) -> int:
    """Descriptors one worker needs when every limit is reached."""
    limits = config.limits
    return 2 * limits.max_connections + limits.max_pending + fixed_need(config)


def pending_ceiling(config: Config, limit: int) -> int | None:
    """How many pending connections fit when the limits need more than ``limit``.

    Half of what the fixed needs leave, so that a flood of pending
    connections reaches its own budget (and eviction) before it can use up
    the descriptors that sessions need. None when everything fits.
    """
    if limit == resource.RLIM_INFINITY or needed(config) <= limit:
        return None
    return max(MIN_PENDING, (limit - fixed_need(config)) // 2)


def shortfall(config: Config, limit: int) -> str | None:
    """What to tell the operator when the limits need more than ``limit``."""
    need = needed(config)
    if limit == resource.RLIM_INFINITY or need <= limit:
        return None
    limits = config.limits
    return (
        f"the limits need {need} file descriptors per worker process"
        f" (2 per session x {limits.max_connections} + {limits.max_pending} pending"
        f" + {fixed_need(config)} for listeners, pooled backend sessions and slack),"
        f" more than the {limit} this process may open (RLIMIT_NOFILE);"
        " raise LimitNOFILE= (systemd) or ulimit -n, or lower limits.max_connections"
    )
