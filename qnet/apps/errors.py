"""Errors the applications raise, typed so that callers (and the CLI's exit code) can tell an
aborted key distribution from a broken network. All are ``qnet.errors.QnetError`` subclasses.
"""

from __future__ import annotations

from qnet.errors import QnetError, Unauthenticated


class AuthenticationFailed(Unauthenticated):
    """A classical message arrived with a bad tag, out of sequence, or truncated: it was not
    sent by the holder of the pre-shared key (or was changed on the way)."""


class ProtocolAborted(QnetError):
    """An application protocol stopped on purpose because carrying on would be unsafe or
    meaningless; the message says why."""

    status = "ABORTED"


class PeerAborted(ProtocolAborted):
    """The other end stopped; its own error says why (and is the one worth reporting)."""


class QberTooHigh(ProtocolAborted):
    """The estimated quantum bit error rate exceeds what key distillation tolerates."""

    def __init__(self, qber: float, threshold: float, *, node: str | None = None) -> None:
        self.qber = qber
        self.threshold = threshold
        super().__init__(
            f"QBER {qber:.2%} is above the {threshold:.0%} threshold: an eavesdropper or too"
            " much noise; no key was produced",
            node=node,
        )


class ReconciliationFailed(ProtocolAborted):
    """After error correction the two keys still differ (their hashes disagree)."""


class KeyTooShort(ProtocolAborted):
    """Privacy amplification leaves no (or too few) secret bits for what was asked."""


class DecryptionFailed(ProtocolAborted):
    """An AES-GCM message did not authenticate under the key, or its content did not match
    the digest sent with it."""
