"""pgtls-proxy: a mutual-TLS front door for PostgreSQL."""

__version__ = "0.1.0"
