"""Cascade error reconciliation (Brassard & Salvail 1993), as used after BB84/BBM92 sifting.

Bob corrects his key towards Alice's by asking her parities of blocks; every parity she
reveals is a bit Eve may learn, counted in ``leaked_bits`` and taken off the final key by
privacy amplification.

- Passes: pass 0 splits the key in order into blocks of k₁ = ⌈0.73/QBER⌉ bits (about one error
  in two blocks, Brassard & Salvail's choice), each later pass doubles the block size and
  works on a fresh shared random permutation, so errors that paired up in one block are
  separated in the next.
- A block whose parities differ holds an odd number of errors; a binary search (one revealed
  parity per halving) finds one and Bob flips it.
- Backtracking (the cascade): that flip changes the parity of the block holding the bit in
  every earlier pass; those now odd hide another error, which is searched in turn.

A block is named by (pass, lo, hi), a range of that pass's permuted order, so a request costs
three integers and Alice can answer from the shared schedule alone. All binary searches of a
round run together: one request message carries one parity per search, so a pass costs about
log₂(k) round trips rather than one per parity.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from qnet.apps.toeplitz import Bits, as_bits
from qnet.errors import InvalidArgument

#: Brassard & Salvail's first block size is about 0.73/QBER.
FIRST_BLOCK_FACTOR = 0.73
DEFAULT_PASSES = 4
#: A sample with no error still does not prove a zero error rate; Cascade plans for at least
#: this rate so that the first pass still has blocks (and so parities that catch an error).
MIN_PLANNING_QBER = 0.005

#: (pass, lo, hi): bits lo..hi−1 of that pass's permuted order.
Block = tuple[int, int, int]
#: Alice's parities of the blocks asked, in order.
ParityOracle = Callable[[list[Block]], Awaitable[list[int]]]


@dataclass(frozen=True)
class CascadeSchedule:
    """What both ends must agree on: key length, block size per pass, and the permutations."""

    n: int
    block_sizes: tuple[int, ...]
    seed: int
    _perms: list[npt.NDArray[np.intp]] = field(init=False, repr=False, compare=False)
    #: Position of each key bit in each pass's permuted order.
    _where: list[npt.NDArray[np.intp]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InvalidArgument(f"Cascade needs a key of at least 1 bit, got {self.n}")
        if not self.block_sizes or any(k < 1 for k in self.block_sizes):
            raise InvalidArgument(f"block sizes must be ≥ 1, got {self.block_sizes}")
        rng = np.random.default_rng(self.seed)
        perms = [np.arange(self.n)]
        perms += [rng.permutation(self.n) for _ in self.block_sizes[1:]]
        object.__setattr__(self, "_perms", perms)
        object.__setattr__(self, "_where", [np.argsort(p) for p in perms])

    @classmethod
    def plan(cls, n: int, qber: float, seed: int, passes: int = DEFAULT_PASSES) -> CascadeSchedule:
        if not 0.0 <= qber < 0.5:
            raise InvalidArgument(f"Cascade needs a QBER in [0, 0.5), got {qber}")
        if passes < 1:
            raise InvalidArgument(f"Cascade needs at least one pass, got {passes}")
        first = math.ceil(FIRST_BLOCK_FACTOR / max(qber, MIN_PLANNING_QBER))
        sizes = tuple(max(1, min(n, first << i)) for i in range(passes))
        return cls(n, sizes, seed)

    @property
    def passes(self) -> int:
        return len(self.block_sizes)

    def permutation(self, p: int) -> npt.NDArray[np.intp]:
        return self._perms[p]

    def top_block(self, p: int, position: int) -> Block:
        """The block of pass ``p`` that holds key bit ``position``."""
        k = self.block_sizes[p]
        lo = int(self._where[p][position]) // k * k
        return (p, lo, min(lo + k, self.n))

    def top_blocks(self, p: int) -> list[Block]:
        k = self.block_sizes[p]
        return [(p, lo, min(lo + k, self.n)) for lo in range(0, self.n, k)]

    def parity(self, key: Bits, block: Block) -> int:
        p, lo, hi = self.check_block(block)
        return int(key[self.permutation(p)[lo:hi]].sum() & 1)

    def parities(self, key: Bits, blocks: Sequence[Block]) -> list[int]:
        """Alice's side: her parity of each block asked."""
        if key.size != self.n:
            raise InvalidArgument(f"key has {key.size} bits, the schedule {self.n}")
        return [self.parity(key, b) for b in blocks]

    def check_block(self, block: Sequence[int]) -> Block:
        """A well-formed block of this schedule (requests come off the network)."""
        if len(block) != 3:
            raise InvalidArgument(f"a block is (pass, lo, hi), got {block!r}")
        p, lo, hi = (int(v) for v in block)
        if not 0 <= p < self.passes or not 0 <= lo < hi <= self.n:
            raise InvalidArgument(f"block {block!r} is outside the schedule")
        return p, lo, hi


@dataclass(frozen=True)
class CascadeResult:
    key: Bits
    #: Parities Alice revealed (each at most one bit of information about the key).
    leaked_bits: int
    #: Bits Bob flipped.
    corrected: int
    #: Request/answer round trips.
    rounds: int


@dataclass
class _Search:
    """A binary search in progress: ``block`` has an odd number of errors; ``alice`` is
    Alice's parity of it (asked, or derived from its parent's and its sibling's)."""

    block: Block
    alice: int
    top: Block


async def reconcile(key: object, schedule: CascadeSchedule, ask: ParityOracle) -> CascadeResult:
    """Bob's side: correct ``key`` towards Alice's by asking her parities through ``ask``."""
    cur = as_bits(key, "key").copy()
    if cur.size != schedule.n:
        raise InvalidArgument(f"key has {cur.size} bits, the schedule {schedule.n}")
    alice_top: dict[Block, int] = {}
    state = {"leaked": 0, "rounds": 0, "flips": 0}

    async def asked(blocks: list[Block]) -> list[int]:
        answers = await ask(blocks)
        if len(answers) != len(blocks) or any(a not in (0, 1) for a in answers):
            raise InvalidArgument("parity answer does not match the request")
        state["leaked"] += len(blocks)
        state["rounds"] += 1
        return [int(a) for a in answers]

    def odd(block: Block, alice: int) -> bool:
        return schedule.parity(cur, block) != alice

    for p in range(schedule.passes):
        tops = schedule.top_blocks(p)
        alice_top.update(zip(tops, await asked(tops), strict=True))
        searches = [_Search(b, alice_top[b], b) for b in tops if odd(b, alice_top[b])]
        while searches:
            # Single bits are found; flip them (each flip may resolve other searches and
            # re-open blocks of earlier passes), then halve the rest in one request.
            ongoing: list[_Search] = []
            flipped: list[int] = []
            for s in searches:
                if not odd(s.block, s.alice):
                    continue  # an earlier flip this round settled it
                _, lo, hi = s.block
                if hi - lo > 1:
                    ongoing.append(s)
                    continue
                position = int(schedule.permutation(s.block[0])[lo])
                cur[position] ^= 1
                flipped.append(position)
            state["flips"] += len(flipped)
            ongoing = [s for s in ongoing if odd(s.block, s.alice)]
            busy = {s.top for s in ongoing}
            for position in flipped:
                for q in range(p + 1):
                    top = schedule.top_block(q, position)
                    if top not in busy and odd(top, alice_top[top]):
                        ongoing.append(_Search(top, alice_top[top], top))
                        busy.add(top)
            if not ongoing:
                break
            lefts = [(s.block[0], s.block[1], (s.block[1] + s.block[2]) // 2) for s in ongoing]
            answers = await asked(lefts)
            searches = []
            for s, left, a in zip(ongoing, lefts, answers, strict=True):
                if odd(left, a):
                    searches.append(_Search(left, a, s.top))
                else:
                    right = (s.block[0], left[2], s.block[2])
                    searches.append(_Search(right, s.alice ^ a, s.top))
    return CascadeResult(cur, state["leaked"], state["flips"], state["rounds"])


def binary_entropy(p: float) -> float:
    """h(p) = −p log₂ p − (1−p) log₂(1−p), the Shannon limit of leakage per key bit."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1 - p) * math.log2(1 - p)
