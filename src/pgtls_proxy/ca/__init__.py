"""The offline certificate authority behind ``pgtls-proxy pki``.

Kept apart from :mod:`pgtls_proxy.pki`, the runtime policy the proxy applies
to every connection: issuing and revoking certificates, with the CA's key and
its files, is an operator's job done beside the proxy, not part of serving.
"""
