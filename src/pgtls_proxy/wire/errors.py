"""The one exception of the wire layer: the peer broke the protocol.

It carries what the client should be told (a SQLSTATE for the ErrorResponse)
and whether it may be told anything at all: before TLS some violations must
end the connection without a reply, as PostgreSQL does for bad startup
lengths and for bytes that follow an SSLRequest.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer sent something the PostgreSQL protocol does not allow.

    Programming mistakes (calling the API wrongly) raise ``ValueError`` or
    ``RuntimeError`` instead, so callers can tell the two apart.
    """

    message: str
    sqlstate: str
    close_silently: bool

    def __init__(
        self, message: str, sqlstate: str = "08P01", *, close_silently: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.close_silently = close_silently

    def __repr__(self) -> str:
        return (
            f"ProtocolError({self.message!r}, {self.sqlstate!r}, "
            f"close_silently={self.close_silently!r})"
        )
