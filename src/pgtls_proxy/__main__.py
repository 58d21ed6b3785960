"""Allow ``python -m pgtls_proxy``."""

from pgtls_proxy.cli import main

raise SystemExit(main())
