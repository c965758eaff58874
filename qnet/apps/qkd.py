"""Quantum key distribution between two nodes, then an encrypted file sent with the key.

Protocols (``protocol=``):

- ``bbm92`` (Bennett, Brassard & Mermin 1992): both ends measure every pair of the
  measure-directly stream in a basis of their own, chosen at random from Z and X
  (``epr_measure(n, basis=[...])``); both announce their bases and keep the pairs measured
  alike. |Φ+⟩ gives equal outcomes in Z and in X.
- ``bb84`` (Bennett & Brassard 1984) over the same measure-directly pairs. Alice's
  measurement of her half in basis b with outcome m leaves Bob's half in the eigenstate
  |b, m⟩ (Φ+ is correlated in Z and X): it prepares, at Bob, a random bit m in a random basis
  b, the BB84 sender's two choices, exactly as if she had sent that state. Bob measures in his
  own random basis. Sifting is BB84's: the receiver announces his bases and the sender answers
  which positions to keep.

Then, the same for both: QBER estimated on a random sample of the sifted bits (revealed and
dropped); abort above 11 %; Cascade (``qnet.apps.cascade``) with Alice's key as reference; a
64-bit Toeplitz hash to confirm the keys agree; privacy amplification by Toeplitz hashing to
the length ``qnet.apps.distill.secret_key_length`` gives. Every classical message goes
through ``AuthenticatedChannel`` (HMAC under a pre-shared key). Finally Alice encrypts a file
with AES-GCM under the key and sends it; Bob decrypts, checks it and confirms its SHA-256.

Each end is a coroutine of its own (``alice_side``, ``bob_side``) that talks only through its
socket, so the two may run in different processes; ``qkd`` runs both for the CLI and tests.
"""

from __future__ import annotations

import base64
import contextlib
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qnet.api.aio import AsyncNode, AsyncSocket
from qnet.apps.auth import AuthenticatedChannel, pack_bits, unpack_bits
from qnet.apps.cascade import CascadeSchedule, reconcile
from qnet.apps.distill import (
    KEY_BASES,
    PA_EPSILON,
    QBER_THRESHOLD,
    VERIFY_BITS,
    KeyLength,
    bases_to_bits,
    failed_mask,
    outcome_bits,
    qber_estimate,
    qber_upper_bound,
    secret_key_length,
    sift,
    werner_qber,
)
from qnet.apps.errors import (
    KeyTooShort,
    PeerAborted,
    ProtocolAborted,
    QberTooHigh,
    ReconciliationFailed,
)
from qnet.apps.secure_file import ReceivedFile, open_sealed, seal
from qnet.apps.session import (
    DEFAULT_TIMEOUT_S,
    Stopwatch,
    check_fidelity,
    check_positive_int,
    connection,
    probe_pair_fidelity,
    run_both,
)
from qnet.apps.stats import Estimate
from qnet.apps.toeplitz import Bits, seed_length, toeplitz_hash
from qnet.errors import InvalidArgument

PORT = 7003
PROTOCOLS = ("bbm92", "bb84")
#: AES-128 needs 128 key bits; less is no usable key.
MIN_KEY_BITS = 128


@dataclass(frozen=True)
class QkdOptions:
    protocol: str = "bbm92"
    pairs: int = 4000
    #: Share of the sifted bits revealed to estimate the QBER.
    sample_fraction: float = 0.2
    qber_threshold: float = QBER_THRESHOLD
    cascade_passes: int = 4
    epsilon: float = PA_EPSILON
    min_key_bits: int = MIN_KEY_BITS

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise InvalidArgument(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        check_positive_int("pairs", self.pairs)
        check_positive_int("cascade_passes", self.cascade_passes)
        check_positive_int("min_key_bits", self.min_key_bits)
        if not 0 < self.sample_fraction < 1:
            raise InvalidArgument(f"sample_fraction must be in (0, 1), got {self.sample_fraction}")
        if not 0 < self.qber_threshold < 0.5:
            raise InvalidArgument(f"qber_threshold must be in (0, 0.5), got {self.qber_threshold}")


@dataclass(frozen=True)
class SideResult:
    """What one end ends with (both ends compute the same figures)."""

    key: Bits
    sifted: int
    sample: int
    sample_errors: int
    length: KeyLength
    corrected: int = 0
    rounds: int = 0
    file: ReceivedFile | None = None
    classical_bytes: int = 0


@dataclass(frozen=True)
class QkdResult:
    protocol: str
    alice: str
    bob: str
    pairs: int
    sifted: int
    sample: int
    qber: Estimate
    length: KeyLength
    #: Bits Cascade flipped at Bob, and its request/answer round trips.
    corrected: int
    cascade_rounds: int
    alice_key: Bits
    bob_key: Bits
    file: ReceivedFile
    pair_fidelity: float
    elapsed_s: float
    wall_s: float
    classical_bytes: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final_bits(self) -> int:
        return int(self.alice_key.size)

    @property
    def keys_agree(self) -> bool:
        return bool(np.array_equal(self.alice_key, self.bob_key))

    @property
    def rate_bps(self) -> float:
        return self.final_bits / self.elapsed_s if self.elapsed_s > 0 else float("inf")

    def summary(self) -> str:
        lo, hi = self.qber.interval()
        return "\n".join(
            [
                f"{self.protocol.upper()} {self.alice} → {self.bob}: {self.pairs} pairs,"
                f" {self.sifted} sifted bits, QBER {self.qber.value:.2%} ± {self.qber.stderr:.2%}"
                f" (95% CI {lo:.2%}–{hi:.2%}, from {self.sample} sampled bits),"
                f" {self.final_bits} final key bits",
                f"  Cascade corrected {self.corrected} of {self.length.reconciled_bits} bits,"
                f" leaking {self.length.leaked_bits} bits (incl. {VERIFY_BITS}-bit check)"
                f" in {self.cascade_rounds} round trips; privacy amplification from the"
                f" QBER bound {self.length.qber_bound:.2%}, {self.length.margin_bits}-bit margin",
                f"  model QBER 2(1−F)/3 = {werner_qber(self.pair_fidelity):.2%} from the stack's"
                f" pair fidelity F = {self.pair_fidelity:.3f} (measurement errors add to it)",
                f"  keys {'agree' if self.keys_agree else 'DIFFER'};"
                f" {self.file.name!r} ({len(self.file.data)} bytes) sent under AES-GCM,"
                f" decrypted and checked (SHA-256 {self.file.sha256[:16]}…)",
                f"  {self.rate_bps:.1f} key bits/s over {self.elapsed_s:.3f} s of run time"
                f" (simulated under --sim; {self.final_bits / max(self.wall_s, 1e-9):.1f} per"
                " wall second,"
                f" {self.wall_s:.2f} s); {self.classical_bytes} bytes of classical messages",
            ]
        )


def _choose_bases(rng: random.Random, n: int) -> list[str]:
    return [KEY_BASES[rng.getrandbits(1)] for _ in range(n)]


#: Pairs asked for per ``epr_measure`` call: the socket's timeout then bounds a stall (no
#: pairs for that long), not the whole run, and progress shows at the daemon call by call.
MEASURE_CHUNK = 500


async def _measure(sock: AsyncSocket, bases: list[str]) -> tuple[Bits, Bits, Bits]:
    outcomes: list[int] = []
    for start in range(0, len(bases), MEASURE_CHUNK):
        chunk = bases[start : start + MEASURE_CHUNK]
        outcomes += await sock.epr_measure(len(chunk), basis=chunk)
    return bases_to_bits(bases), failed_mask(outcomes), outcome_bits(outcomes)


async def alice_side(
    sock: AsyncSocket,
    psk: bytes,
    options: QkdOptions,
    *,
    local: str,
    remote: str,
    file_name: str,
    file_data: bytes,
    rng: random.Random | None = None,
) -> SideResult:
    """The reference end: its raw key is the one Bob corrects towards; it sends the file."""
    rng = rng or random.SystemRandom()
    chan = AuthenticatedChannel(sock, psk, local=local, remote=remote)
    try:
        bases, failed, bits = await _measure(sock, _choose_bases(rng, options.pairs))
        if options.protocol == "bbm92":
            await chan.send("sift", bases=pack_bits(bases), failed=pack_bits(failed))
            theirs = await chan.recv("sift")
            keep = sift(bases, failed, unpack_bits(theirs["bases"]), unpack_bits(theirs["failed"]))
        else:
            theirs = await chan.recv("sift")
            keep = sift(bases, failed, unpack_bits(theirs["bases"]), unpack_bits(theirs["failed"]))
            await chan.send("keep", keep=pack_bits(keep))
        sifted = bits[keep == 1]
        sample = _sample_mask(rng, sifted.size, options.sample_fraction)
        cascade_seed = rng.getrandbits(63)
        await chan.send(
            "sample", mask=pack_bits(sample), bits=pack_bits(sifted[sample == 1]), seed=cascade_seed
        )
        their_sample = unpack_bits((await chan.recv("sample-bits"))["bits"])
        errors = _sample_errors(sifted[sample == 1], their_sample)
        key = sifted[sample == 0]
        qber = _check_qber(errors, int(sample.sum()), options, local)
        schedule = CascadeSchedule.plan(key.size, qber.value, cascade_seed, options.cascade_passes)
        leaked = await _answer_parities(chan, key, schedule)
        verify_seed = _random_bits(rng, seed_length(key.size, VERIFY_BITS))
        await chan.send(
            "verify",
            seed=pack_bits(verify_seed),
            hash=pack_bits(toeplitz_hash(key, verify_seed, VERIFY_BITS)),
        )
        if not (await chan.recv("verified"))["ok"]:
            raise ReconciliationFailed(
                "the keys still differ after Cascade (their hashes disagree)", node=local
            )
        length = _key_length(key.size, qber, leaked + VERIFY_BITS, options, local)
        pa_seed = _random_bits(rng, seed_length(key.size, length.secret_bits))
        await chan.send("amplify", seed=pack_bits(pa_seed), length=length.secret_bits)
        final = toeplitz_hash(key, pa_seed, length.secret_bits)
        sealed = seal(final, file_name, file_data)
        await chan.send("file", sealed=base64.b64encode(sealed).decode())
        confirmed = await chan.recv("file-ok")
        received = open_sealed(final, sealed)
        if confirmed.get("sha256") != received.sha256:
            raise ProtocolAborted(f"{remote} confirmed a different file digest", node=local)
        return SideResult(
            final,
            int(sifted.size),
            int(sample.sum()),
            errors,
            length,
            file=received,
            classical_bytes=chan.bytes_sent + chan.bytes_received,
        )
    except ProtocolAborted as exc:
        await _tell_peer(chan, exc)
        raise


async def bob_side(
    sock: AsyncSocket,
    psk: bytes,
    options: QkdOptions,
    *,
    local: str,
    remote: str,
    rng: random.Random | None = None,
) -> SideResult:
    """The correcting end: runs Cascade against Alice's parities and receives the file."""
    rng = rng or random.SystemRandom()
    chan = AuthenticatedChannel(sock, psk, local=local, remote=remote)
    try:
        bases, failed, bits = await _measure(sock, _choose_bases(rng, options.pairs))
        if options.protocol == "bbm92":
            await chan.send("sift", bases=pack_bits(bases), failed=pack_bits(failed))
            theirs = await chan.recv("sift")
            keep = sift(bases, failed, unpack_bits(theirs["bases"]), unpack_bits(theirs["failed"]))
        else:
            await chan.send("sift", bases=pack_bits(bases), failed=pack_bits(failed))
            keep = unpack_bits((await chan.recv("keep"))["keep"])
            # Alice may only drop positions: a kept position Bob measured in another basis
            # (or lost) would be a lie, and would corrupt the key.
            if keep.size != bases.size or np.any(keep & failed):
                raise ProtocolAborted("Alice's sifting mask does not fit our bases", node=local)
        sifted = bits[keep == 1]
        offer = await chan.recv("sample")
        sample = unpack_bits(offer["mask"])
        if sample.size != sifted.size:
            raise ProtocolAborted("the sample mask does not fit the sifted key", node=local)
        await chan.send("sample-bits", bits=pack_bits(sifted[sample == 1]))
        errors = _sample_errors(sifted[sample == 1], unpack_bits(offer["bits"]))
        key = sifted[sample == 0]
        qber = _check_qber(errors, int(sample.sum()), options, local)
        schedule = CascadeSchedule.plan(
            key.size, qber.value, int(offer["seed"]), options.cascade_passes
        )

        async def ask(blocks: list[tuple[int, int, int]]) -> list[int]:
            await chan.send("parities?", blocks=[list(b) for b in blocks], done=False)
            return [int(b) for b in unpack_bits((await chan.recv("parities"))["bits"])]

        result = await reconcile(key, schedule, ask)
        await chan.send("parities?", blocks=[], done=True)
        check = await chan.recv("verify")
        verify_seed = unpack_bits(check["seed"])
        ok = bool(
            np.array_equal(
                toeplitz_hash(result.key, verify_seed, VERIFY_BITS), unpack_bits(check["hash"])
            )
        )
        await chan.send("verified", ok=ok)
        if not ok:
            raise ReconciliationFailed(
                "the keys still differ after Cascade (their hashes disagree)", node=local
            )
        length = _key_length(key.size, qber, result.leaked_bits + VERIFY_BITS, options, local)
        amplify = await chan.recv("amplify")
        if int(amplify["length"]) != length.secret_bits:
            raise ProtocolAborted(
                f"Alice wants {amplify['length']} key bits, our bound gives {length.secret_bits}",
                node=local,
            )
        final = toeplitz_hash(result.key, unpack_bits(amplify["seed"]), length.secret_bits)
        sealed = base64.b64decode((await chan.recv("file"))["sealed"])
        received = open_sealed(final, sealed)
        await chan.send("file-ok", sha256=received.sha256)
        return SideResult(
            final,
            int(sifted.size),
            int(sample.sum()),
            errors,
            length,
            corrected=result.corrected,
            rounds=result.rounds,
            file=received,
            classical_bytes=chan.bytes_sent + chan.bytes_received,
        )
    except ProtocolAborted as exc:
        await _tell_peer(chan, exc)
        raise


async def _answer_parities(chan: AuthenticatedChannel, key: Bits, schedule: CascadeSchedule) -> int:
    """Alice's side of Cascade: answer each request; the parities revealed."""
    leaked = 0
    while True:
        request = await chan.recv("parities?")
        if request.get("done"):
            return leaked
        blocks = [schedule.check_block(b) for b in request["blocks"]]
        leaked += len(blocks)
        parities = np.array(schedule.parities(key, blocks), dtype=np.uint8)
        await chan.send("parities", bits=pack_bits(parities))


def _sample_mask(rng: random.Random, n: int, fraction: float) -> Bits:
    size = round(n * fraction)
    if size < 1 or size >= n:
        raise KeyTooShort(
            f"{n} sifted bits are too few to sample {fraction:.0%} and keep a key: use more pairs"
        )
    mask = np.zeros(n, dtype=np.uint8)
    mask[rng.sample(range(n), size)] = 1
    return mask


def _sample_errors(mine: Bits, theirs: Bits) -> int:
    if mine.size != theirs.size:
        raise ProtocolAborted(f"sample sizes differ ({mine.size} and {theirs.size})")
    return int(np.count_nonzero(mine != theirs))


def _check_qber(errors: int, sample: int, options: QkdOptions, node: str) -> Estimate:
    qber = qber_estimate(errors, sample)
    if qber.value > options.qber_threshold:
        raise QberTooHigh(qber.value, options.qber_threshold, node=node)
    return qber


def _key_length(n: int, qber: Estimate, leaked: int, options: QkdOptions, node: str) -> KeyLength:
    length = secret_key_length(n, qber_upper_bound(qber), leaked, options.epsilon)
    if length.secret_bits < options.min_key_bits:
        raise KeyTooShort(
            f"privacy amplification leaves {length.secret_bits} secret bits of {n}"
            f" (QBER bound {length.qber_bound:.2%}, {leaked} bits leaked), fewer than the"
            f" {options.min_key_bits} wanted: use more pairs",
            node=node,
        )
    return length


def _random_bits(rng: random.Random, n: int) -> Bits:
    return np.fromiter((rng.getrandbits(1) for _ in range(n)), dtype=np.uint8, count=n)


async def _tell_peer(chan: AuthenticatedChannel, exc: ProtocolAborted) -> None:
    """Best effort: let the other end stop too instead of waiting for a message."""
    if isinstance(exc, PeerAborted):
        return
    # The connection may already be gone; the local error is what matters.
    with contextlib.suppress(Exception):
        await chan.abort(exc.reason)


async def qkd(
    alice: AsyncNode,
    bob: AsyncNode,
    *,
    options: QkdOptions | None = None,
    psk: bytes | None = None,
    file_name: str = "message.txt",
    file_data: bytes | None = None,
    seed: int | None = None,
    min_fidelity: float = 0.95,
    port: int = PORT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> QkdResult:
    """Distil a key between ``alice`` and ``bob`` and send ``file_data`` encrypted with it.
    ``psk`` is the pre-shared authentication key (random if None: both ends run here);
    ``seed`` makes the random choices repeatable (for tests; None uses the OS's randomness)."""
    options = options or QkdOptions()
    check_fidelity("min_fidelity", min_fidelity)
    psk = psk if psk is not None else secrets.token_bytes(32)
    if file_data is None:
        file_data = b"qnet: a quantum-secured greeting, sealed with AES-GCM.\n" * 32
    a_rng = random.Random(seed) if seed is not None else None
    b_rng = random.Random(seed + 1) if seed is not None else None
    clock = Stopwatch.started()
    async with connection(alice, bob, port, min_fidelity=min_fidelity, timeout_s=timeout_s) as (
        a_sock,
        b_sock,
    ):
        pair_fidelity = await probe_pair_fidelity(a_sock, b_sock)
        a, b = await run_both(
            lambda: alice_side(
                a_sock,
                psk,
                options,
                local=alice.name,
                remote=bob.name,
                file_name=file_name,
                file_data=file_data,
                rng=a_rng,
            ),
            lambda: bob_side(b_sock, psk, options, local=bob.name, remote=alice.name, rng=b_rng),
        )
    assert b.file is not None
    return QkdResult(
        options.protocol,
        alice.name,
        bob.name,
        options.pairs,
        a.sifted,
        a.sample,
        qber_estimate(a.sample_errors, a.sample),
        b.length,
        b.corrected,
        b.rounds,
        a.key,
        b.key,
        b.file,
        pair_fidelity,
        clock.elapsed_s,
        clock.wall_s,
        a.classical_bytes,
    )
