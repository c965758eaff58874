"""Using a distilled key: AES-GCM encryption of a file sent over a qnet connection.

The key material is the QKD key's first 256 bits (AES-256), or 128 if that is all there is;
each key is used for one file, so a random 96-bit nonce never repeats under it. The file name
and the plaintext's SHA-256 travel as associated data: GCM authenticates them with the
ciphertext, and the receiver checks the digest after decrypting.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qnet.apps.auth import MessageSocket
from qnet.apps.errors import DecryptionFailed, KeyTooShort
from qnet.apps.toeplitz import Bits, as_bits

NONCE_BYTES = 12
_HEADER = struct.Struct(">H32s")  # name length, SHA-256 of the plaintext


def aes_key(key_bits: object) -> bytes:
    """AES-256 from the first 256 key bits, else AES-128 from the first 128."""
    bits = as_bits(key_bits, "key")
    for size in (256, 128):
        if bits.size >= size:
            return np.packbits(bits[:size]).tobytes()
    raise KeyTooShort(f"an AES key needs at least 128 key bits, the QKD key has {bits.size}")


@dataclass(frozen=True)
class ReceivedFile:
    name: str
    data: bytes
    sha256: str


def seal(key_bits: Bits, name: str, data: bytes) -> bytes:
    """One message: header ‖ name ‖ nonce ‖ AES-GCM(ciphertext and tag)."""
    encoded = name.encode()
    digest = hashlib.sha256(data).digest()
    header = _HEADER.pack(len(encoded), digest) + encoded
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + AESGCM(aes_key(key_bits)).encrypt(nonce, data, header)


def open_sealed(key_bits: Bits, message: bytes) -> ReceivedFile:
    try:
        name_len, digest = _HEADER.unpack_from(message)
    except struct.error:
        raise DecryptionFailed("the encrypted file message is truncated") from None
    start = _HEADER.size + name_len
    header, nonce, sealed = (
        message[:start],
        message[start : start + NONCE_BYTES],
        message[start + NONCE_BYTES :],
    )
    try:
        data = AESGCM(aes_key(key_bits)).decrypt(nonce, sealed, header)
    except (InvalidTag, ValueError):
        raise DecryptionFailed(
            "the file did not authenticate under our key (keys differ, or it was changed)"
        ) from None
    if hashlib.sha256(data).digest() != digest:
        raise DecryptionFailed("the decrypted file does not match its SHA-256")
    return ReceivedFile(header[_HEADER.size :].decode(), data, digest.hex())


async def send_file(sock: MessageSocket, key_bits: Bits, name: str, data: bytes) -> None:
    await sock.send(seal(key_bits, name, data))


async def recv_file(sock: MessageSocket, key_bits: Bits) -> ReceivedFile:
    message = await sock.recv()
    if not message:
        raise DecryptionFailed("the connection closed before the file came")
    return open_sealed(key_bits, message)
