"""Connection states of the transport core, as transition tables.

::

    connector                                   acceptor
    SYN_SENT ── SynAck ──► CIRCUIT_WAIT         (Syn to a listener) SYN_RECEIVED
    CIRCUIT_WAIT ── circuit open ──► ESTABLISHED  SYN_RECEIVED ── HandshakeAck ──► ESTABLISHED

    ESTABLISHED ── close ──► FIN_WAIT ── peer's Fin ──► CLOSING
    ESTABLISHED ── peer's Fin ──► CLOSE_WAIT ── close ──► CLOSING
    CLOSING ── own Fin acknowledged, nothing left to deliver ──► TIME_WAIT ── linger ──► CLOSED
    any state ── failure (timeout, reset, circuit lost, protocol error, abort) ──► CLOSED

``close`` closes this end's output (half-close): messages and teleported qubits keep coming
from the other end until its ``Fin``. TIME_WAIT lingers so that a peer whose last
acknowledgement was lost gets it again; the connection is then forgotten.

A second table says which application calls each state allows: a call not allowed is refused
at once (``FailedPrecondition``); an input from the peer or the driver that the table does not
allow is a protocol error.
"""

from __future__ import annotations

from enum import Enum


class ConnState(Enum):
    SYN_SENT = "syn-sent"
    #: The connector has the acceptor's SynAck and waits for its circuit to open.
    CIRCUIT_WAIT = "circuit-wait"
    SYN_RECEIVED = "syn-received"
    ESTABLISHED = "established"
    #: This end closed its output; the peer's is open.
    FIN_WAIT = "fin-wait"
    #: The peer closed its output; this end's is open.
    CLOSE_WAIT = "close-wait"
    #: Both outputs closed; waiting for our Fin's acknowledgement and the last pairs.
    CLOSING = "closing"
    TIME_WAIT = "time-wait"
    CLOSED = "closed"


class ConnInput(Enum):
    SYN_ACK = "SynAck"
    CIRCUIT_OPEN = "circuit open"
    CIRCUIT_FAILED = "circuit failed"
    HANDSHAKE_ACK = "HandshakeAck"
    #: A sequenced record or an Ack.
    RECORD = "record or ack"
    PEER_FIN = "peer's Fin, in order"
    CLOSE = "close"
    #: Our Fin is acknowledged, the peer's arrived and nothing is left for the application.
    DONE = "all done"
    LINGER_END = "linger over"
    #: The circuit ended after both outputs closed, with nothing left waiting on a pair.
    CIRCUIT_ENDED = "circuit ended when idle"
    #: The peer forgot the connection (a Reset) after both outputs closed, with nothing left.
    PEER_GONE = "peer gone when idle"
    FAIL = "failure"


S = ConnState
I = ConnInput  # noqa: E741 (a table reads better with one letter)

_OPEN_AFTER_HANDSHAKE = (S.ESTABLISHED, S.FIN_WAIT, S.CLOSE_WAIT, S.CLOSING, S.TIME_WAIT)

#: Every legal (state, input) → next state.
CONN_TRANSITIONS: dict[tuple[ConnState, ConnInput], ConnState] = {
    (S.SYN_SENT, I.SYN_ACK): S.CIRCUIT_WAIT,
    (S.CIRCUIT_WAIT, I.SYN_ACK): S.CIRCUIT_WAIT,  # a copy: the circuit is still opening
    (S.CIRCUIT_WAIT, I.CIRCUIT_OPEN): S.ESTABLISHED,
    (S.CIRCUIT_WAIT, I.CIRCUIT_FAILED): S.CLOSED,
    (S.SYN_RECEIVED, I.HANDSHAKE_ACK): S.ESTABLISHED,
    # Records that overtook the HandshakeAck: dropped unacknowledged, the peer resends them.
    (S.SYN_RECEIVED, I.RECORD): S.SYN_RECEIVED,
    (S.ESTABLISHED, I.PEER_FIN): S.CLOSE_WAIT,
    (S.FIN_WAIT, I.PEER_FIN): S.CLOSING,
    (S.ESTABLISHED, I.CLOSE): S.FIN_WAIT,
    (S.CLOSE_WAIT, I.CLOSE): S.CLOSING,
    (S.CLOSING, I.DONE): S.TIME_WAIT,
    (S.TIME_WAIT, I.LINGER_END): S.CLOSED,
    (S.CLOSING, I.CIRCUIT_ENDED): S.CLOSING,
    (S.TIME_WAIT, I.CIRCUIT_ENDED): S.TIME_WAIT,
    (S.CLOSING, I.PEER_GONE): S.CLOSING,
    (S.TIME_WAIT, I.PEER_GONE): S.TIME_WAIT,
}
for _state in _OPEN_AFTER_HANDSHAKE:
    # Copies of the handshake's last messages are answered again (their answer was lost).
    CONN_TRANSITIONS[(_state, I.SYN_ACK)] = _state
    CONN_TRANSITIONS[(_state, I.HANDSHAKE_ACK)] = _state
    CONN_TRANSITIONS[(_state, I.RECORD)] = _state
for _state in S:
    if _state is not S.CLOSED:
        CONN_TRANSITIONS[(_state, I.FAIL)] = S.CLOSED


class IllegalTransition(Exception):
    """An input the table does not allow; the core turns it into the caller's error type."""


def next_conn_state(state: ConnState, event: ConnInput) -> ConnState:
    try:
        return CONN_TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"{event.value} in state {state.value}") from None


class AppCall(Enum):
    SEND = "send"
    SEND_QUBIT = "send_qubit"
    RECV = "recv"
    EPR = "epr"
    EPR_MEASURE = "epr_measure"
    CLOSE = "close"


#: The states in which each application call is allowed (``abort`` always is). Receiving
#: calls stay allowed to the end: they are answered from what is left, then with end of
#: stream (``PeerFinished``, ``PairsEnded``).
APP_CALLS: dict[AppCall, frozenset[ConnState]] = {
    AppCall.SEND: frozenset({S.ESTABLISHED, S.CLOSE_WAIT}),
    AppCall.SEND_QUBIT: frozenset({S.ESTABLISHED, S.CLOSE_WAIT}),
    AppCall.RECV: frozenset(_OPEN_AFTER_HANDSHAKE),
    AppCall.EPR: frozenset(_OPEN_AFTER_HANDSHAKE),
    AppCall.EPR_MEASURE: frozenset(_OPEN_AFTER_HANDSHAKE),
    # In SYN_SENT and CIRCUIT_WAIT ``close`` aborts the attempt (``TransportCore.close``).
    AppCall.CLOSE: frozenset({S.ESTABLISHED, S.CLOSE_WAIT, S.SYN_SENT, S.CIRCUIT_WAIT}),
}

#: States in which this end's output is closed (it sent, or will send, its Fin).
OUTPUT_CLOSED = frozenset({S.FIN_WAIT, S.CLOSING, S.TIME_WAIT})
#: States in which the peer's Fin arrived.
PEER_OUTPUT_CLOSED = frozenset({S.CLOSE_WAIT, S.CLOSING, S.TIME_WAIT})
#: States before the handshake completed.
HANDSHAKING = frozenset({S.SYN_SENT, S.CIRCUIT_WAIT, S.SYN_RECEIVED})
