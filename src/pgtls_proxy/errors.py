"""The error every configuration problem is: a key path and what is wrong with it.

The config parser (:class:`pgtls_proxy.config.ConfigError`) and the loaders of
the files it names (:class:`pgtls_proxy.pki.contexts.TLSConfigError`) both
raise one of these, so ``run``, ``reload`` and ``check`` catch one type and
print ``<key path>: <what>``. It lives in a module of its own, importing
nothing, so that ``config`` and ``pki`` can both build on it without a cycle.
"""

from __future__ import annotations


class KeyPathError(Exception):
    """A problem with the setting at ``key`` (``tls.key_file``, ``rules[2].identity``).

    ``key`` is empty when the problem concerns the file as a whole (it cannot
    be read, it is not YAML); the text is then the message alone.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message
