"""Reading the SSH wire format (RFC 4251, section 5): uint32 and length-prefixed strings.

One reader for public key blobs and OpenSSH private key files alike. It raises ``WireError``
(a ValueError) when a field runs past the end of the data; each caller turns that into its own
error, worded for what it was reading.
"""

from __future__ import annotations

import base64
import hashlib
import struct

_UINT32 = struct.Struct(">I")


def fingerprint(blob: bytes) -> str:
    """``SHA256:<base64 without padding>`` of a key's wire form, as ``ssh-keygen -l`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


class WireError(ValueError):
    """The data ends inside a field."""


class WireReader:
    """Reads fields one after another from ``data``, starting at ``pos``."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise WireError("truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def uint32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise WireError("truncated")
        (value,) = _UINT32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def string(self) -> bytes:
        return self.take(self.uint32())

    def skip(self, count: int) -> None:
        """Pass over ``count`` strings."""
        for _ in range(count):
            self.string()

    def at_end(self) -> bool:
        return self.pos == len(self.data)
