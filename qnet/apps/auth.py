"""Authenticated classical messages over a qnet connection, for key distribution.

QKD is secure only if the classical channel is authenticated: otherwise Eve sits in the
middle and runs one key exchange with each end. Both ends hold a pre-shared key; each
message carries HMAC-SHA256 over (sender, receiver, sequence number, payload), so a message
that was changed, forged, replayed, reordered or reflected back to its sender is refused
with ``AuthenticationFailed``. (A deployed system would spend a few bits of each new key on
a Wegman–Carter tag instead of reusing one HMAC key; HMAC keeps the demonstration simple and
is what the brief asks.)

Frame: 32-byte tag ‖ 8-byte big-endian sequence number ‖ payload. Payloads are JSON objects
with a ``type``; bit strings travel packed (``pack_bits``) to keep Cascade's messages small.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any, Protocol

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from qnet.apps.errors import AuthenticationFailed, PeerAborted, ProtocolAborted
from qnet.apps.toeplitz import Bits
from qnet.errors import InvalidArgument

TAG_BYTES = 32
#: Shorter pre-shared keys would make the tag easier to forge than the key is to guess.
MIN_PSK_BYTES = 16
_SEQ = struct.Struct(">Q")


class MessageSocket(Protocol):
    """The part of a qnet socket this needs."""

    async def send(self, data: bytes) -> None: ...
    async def recv(self) -> bytes: ...


class AuthenticatedChannel:
    """Send and receive JSON messages tagged with HMAC under a pre-shared key."""

    def __init__(self, sock: MessageSocket, psk: bytes, *, local: str, remote: str) -> None:
        if len(psk) < MIN_PSK_BYTES:
            raise InvalidArgument(
                f"the pre-shared key must have at least {MIN_PSK_BYTES} bytes, got {len(psk)}"
            )
        if local == remote:
            raise InvalidArgument("the two ends of an authenticated channel need distinct names")
        self._sock = sock
        self._psk = psk
        self.local = local
        self.remote = remote
        self._sent = 0
        self._received = 0
        #: Bytes of payload exchanged each way (the classical cost of the protocol).
        self.bytes_sent = 0
        self.bytes_received = 0

    async def send(self, kind: str, **fields: Any) -> None:
        payload = json.dumps({"type": kind, **fields}, separators=(",", ":")).encode()
        seq = _SEQ.pack(self._sent)
        self._sent += 1
        tag = self._tag(self.local, self.remote, seq, payload)
        self.bytes_sent += len(payload)
        await self._sock.send(tag + seq + payload)

    async def recv(self, kind: str) -> dict[str, Any]:
        """The next message, which must be of type ``kind``; an ``abort`` from the peer
        raises ``ProtocolAborted`` with its reason."""
        frame = await self._sock.recv()
        if not frame:
            raise PeerAborted(f"{self.remote} closed the connection", node=self.local)
        if len(frame) < TAG_BYTES + _SEQ.size:
            raise AuthenticationFailed(
                f"a {len(frame)}-byte message from {self.remote} is too short to carry a tag",
                node=self.local,
            )
        tag, seq, payload = frame[:TAG_BYTES], frame[TAG_BYTES:40], frame[40:]
        h = hmac.HMAC(self._psk, hashes.SHA256())
        h.update(self._header(self.remote, self.local, seq))
        h.update(payload)
        try:
            h.verify(tag)
        except InvalidSignature:
            raise AuthenticationFailed(
                f"message from {self.remote} has a bad authentication tag: refused",
                node=self.local,
            ) from None
        if _SEQ.unpack(seq)[0] != self._received:
            raise AuthenticationFailed(
                f"message from {self.remote} is out of sequence (replayed or reordered)",
                node=self.local,
            )
        self._received += 1
        self.bytes_received += len(payload)
        message: dict[str, Any] = json.loads(payload)
        if message.get("type") == "abort":
            raise PeerAborted(f"{self.remote} aborted: {message.get('reason')}", node=self.local)
        if message.get("type") != kind:
            raise ProtocolAborted(
                f"expected a {kind!r} message from {self.remote}, got {message.get('type')!r}",
                node=self.local,
            )
        return message

    async def abort(self, reason: str) -> None:
        """Tell the peer we stop (best effort: the connection may be gone already)."""
        await self.send("abort", reason=reason)

    def _tag(self, sender: str, receiver: str, seq: bytes, payload: bytes) -> bytes:
        h = hmac.HMAC(self._psk, hashes.SHA256())
        h.update(self._header(sender, receiver, seq))
        h.update(payload)
        return h.finalize()

    @staticmethod
    def _header(sender: str, receiver: str, seq: bytes) -> bytes:
        # The direction is in the tag, so a message cannot be reflected back to its sender.
        return f"qnet-app\x00{sender}\x00{receiver}\x00".encode() + seq


def pack_bits(bits: Bits) -> dict[str, Any]:
    """A bit array as JSON: its length and its packed bytes in base64."""
    return {"n": int(bits.size), "b": base64.b64encode(np.packbits(bits).tobytes()).decode()}


def unpack_bits(value: Any) -> Bits:
    try:
        n = int(value["n"])
        raw = np.frombuffer(base64.b64decode(value["b"], validate=True), dtype=np.uint8)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"malformed bit string: {exc}") from None
    if not 0 <= n <= raw.size * 8:
        raise InvalidArgument(f"bit string claims {n} bits in {raw.size} bytes")
    return np.unpackbits(raw)[:n].astype(np.uint8)
