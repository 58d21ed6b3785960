"""Start ``pgtls-proxy`` for the benchmark: ``python bench/launch_proxy.py run --config …``.

It is ``python -m pgtls_proxy`` with one change outside the proxy's own code:
trio's idle worker threads are kept instead of exiting after 10 seconds.

Why: the supervisor starts workers with ``trio.lowlevel.open_process``, which
forks from one of trio's cached worker threads, and each worker asks for
``PR_SET_PDEATHSIG``. The kernel sends that signal when the *thread* that
forked the worker exits, not the process, so every worker receives SIGTERM
about 10 seconds after it started (when the idle thread retires), drains and
is restarted, and sessions in flight are cut. Until the proxy itself avoids
that, the benchmark keeps the threads; ``bench/run.py --as-shipped`` starts
the proxy without this and then reports the runs that a restart disturbed.
"""

from __future__ import annotations

import trio._core._thread_cache as _thread_cache

from pgtls_proxy.cli import main

_thread_cache.IDLE_TIMEOUT = 10**6  # seconds; threading's TIMEOUT_MAX is far larger

if __name__ == "__main__":
    raise SystemExit(main())
