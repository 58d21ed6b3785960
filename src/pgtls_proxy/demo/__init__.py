"""``pgtls-proxy demo`` and the throwaway PostgreSQL clusters it runs on.

:mod:`.cluster` is plumbing for the demo, the test suite and the benchmarks
(initdb, pg_ctl, pg_hba); :mod:`.run` is the demo itself. Neither is part of
serving: the proxy's own modules never import this package.
"""
