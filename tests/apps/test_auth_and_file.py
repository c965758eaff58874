"""The classical security pieces of QKD: HMAC-authenticated messages (forged, changed,
replayed or reflected ones are refused) and the AES-GCM file (wrong key or change refused)."""

from __future__ import annotations

import numpy as np
import pytest

from qnet.apps.auth import AuthenticatedChannel, pack_bits, unpack_bits
from qnet.apps.errors import AuthenticationFailed, DecryptionFailed, KeyTooShort, PeerAborted
from qnet.apps.secure_file import open_sealed, seal
from qnet.errors import InvalidArgument

PSK = bytes(range(32))


class Wire:
    """Both directions of a connection as lists; ``tamper`` edits frames in flight."""

    def __init__(self) -> None:
        self.frames: dict[str, list[bytes]] = {"alice": [], "bob": []}

    def end(self, me: str, other: str) -> End:
        return End(self, me, other)


class End:
    def __init__(self, wire: Wire, me: str, other: str) -> None:
        self.wire, self.me, self.other = wire, me, other

    async def send(self, data: bytes) -> None:
        self.wire.frames[self.other].append(data)

    async def recv(self) -> bytes:
        inbox = self.wire.frames[self.me]
        return inbox.pop(0) if inbox else b""


def _pair(psk_b: bytes = PSK) -> tuple[Wire, AuthenticatedChannel, AuthenticatedChannel]:
    wire = Wire()
    a = AuthenticatedChannel(wire.end("alice", "bob"), PSK, local="alice", remote="bob")
    b = AuthenticatedChannel(wire.end("bob", "alice"), psk_b, local="bob", remote="alice")
    return wire, a, b


async def test_messages_round_trip_with_packed_bits() -> None:
    _, a, b = _pair()
    bits = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1], dtype=np.uint8)
    await a.send("sift", bases=pack_bits(bits), n=3)
    got = await b.recv("sift")
    assert np.array_equal(unpack_bits(got["bases"]), bits)
    assert got["n"] == 3


async def test_a_changed_message_is_refused() -> None:
    wire, a, b = _pair()
    await a.send("sample", bits=[0, 1, 1])
    frame = wire.frames["bob"][0]
    wire.frames["bob"][0] = frame.replace(b"[0,1,1]", b"[0,0,1]")
    with pytest.raises(AuthenticationFailed, match="bad authentication tag") as refused:
        await b.recv("sample")
    assert refused.value.node == "bob"


async def test_a_forger_without_the_key_is_refused() -> None:
    _, a, b = _pair(psk_b=b"another key of 16+ bytes")
    await a.send("sift", x=1)
    with pytest.raises(AuthenticationFailed):
        await b.recv("sift")


async def test_replayed_and_reflected_messages_are_refused() -> None:
    wire, a, b = _pair()
    await a.send("sift", x=1)
    frame = wire.frames["bob"][0]
    await b.recv("sift")
    wire.frames["bob"].append(frame)  # the same frame again
    with pytest.raises(AuthenticationFailed, match="out of sequence"):
        await b.recv("sift")
    # Alice's own message sent back to her does not verify as Bob's.
    wire.frames["alice"].append(frame)
    with pytest.raises(AuthenticationFailed):
        await a.recv("sift")


async def test_truncation_abort_and_bad_setup() -> None:
    wire, a, b = _pair()
    wire.frames["bob"].append(b"short")
    with pytest.raises(AuthenticationFailed, match="too short"):
        await b.recv("x")
    await a.abort("QBER too high")
    with pytest.raises(PeerAborted, match="QBER too high"):
        await b.recv("x")
    with pytest.raises(InvalidArgument, match="at least 16 bytes"):
        AuthenticatedChannel(wire.end("a", "b"), b"short", local="a", remote="b")


def test_sealed_file_opens_only_under_the_same_key() -> None:
    rng = np.random.default_rng(3)
    key = rng.integers(0, 2, 300).astype(np.uint8)
    data = bytes(rng.integers(0, 256, 5000).astype(np.uint8))
    sealed = seal(key, "report.bin", data)
    got = open_sealed(key, sealed)
    assert (got.name, got.data) == ("report.bin", data)
    other = key.copy()
    other[7] ^= 1
    with pytest.raises(DecryptionFailed):
        open_sealed(other, sealed)
    changed = bytearray(sealed)
    changed[-1] ^= 1
    with pytest.raises(DecryptionFailed):
        open_sealed(key, bytes(changed))
    with pytest.raises(KeyTooShort):
        seal(key[:100], "x", b"data")
