"""Transport layer: ports, connections, pair streams, teleportation, classical messages.

``TransportCore`` (one per node) is a sans-IO protocol core: every input takes ``now`` (integer
ns of the node's physical clock), outputs queue up for ``pop_outputs()``, ``next_deadline()``
says when ``on_timer(now)`` is due. It reads no clock, does no I/O and starts no task.

Modules: ``events`` (messages, commands, events), ``states`` (the connection state machine and
which application calls each state allows), ``core`` (ports, handshake, dispatch, timers,
endings), ``connection`` (one connection's records, messages and flow control), ``pairs`` (who
uses which end-to-end pair: epr and measure-directly streams, teleportation), ``reliable``
(sequenced records, acknowledgements, retransmission), ``config``.

How the two ends agree on pairs
-------------------------------
The connecting end opens the circuit (it is the circuit's head) once the acceptor answered
its ``Syn``, and names the circuit in the ``HandshakeAck``, which it repeats until the acceptor
answers with an ``Ack``; the acceptor binds that circuit to the connection (pairs that arrive
before are kept for ``orphan_timeout_ns``). The acceptor, the circuit's tail, receives every
pair index first and decides its use (``PairUse``); the connector learns the uses from
``PairUses`` records. See ``pairs``. The connector closes the circuit once both ``Fin``s are out,
its own is acknowledged and nothing waits on a pair; on a failure either end closes it.

Closing: ``close`` sends a ``Fin`` after every message and teleported qubit queued before it;
``Closed`` comes once both ends closed, our ``Fin`` is acknowledged and the application read
every message (unread messages keep the connection in CLOSING; ``abort`` ends it at once).

Driver contract
---------------
Inputs (call them, then move ``pop_outputs()`` on, even when the call raised):

- application: ``listen``, ``unlisten``, ``accept``, ``connect`` (→ connection id), ``send``,
  ``recv``, ``epr``, ``epr_measure``, ``send_qubit``, ``close``, ``abort``. Calls that ask for
  something (``accept``, ``recv``, ``epr``, ``epr_measure``) register demand that events answer
  in order; demand is never withdrawn, so an event whose caller was cancelled belongs to the
  next caller. A call illegal in the connection's state raises ``FailedPrecondition`` at once;
  an unknown connection ``NotFound``; a bad argument ``InvalidArgument``. ``send`` never
  blocks: the driver bounds its application with ``connection(id).unsent_bytes``.
- peer: ``on_message(s)(sender, messages, now)`` for every transport message addressed to this
  node (``message_from_dict`` rebuilds them). Raises ``ProtocolError`` for a message illegal in
  its connection's state, after resetting that connection.
- network layer, for each ``OpenCircuit(conn, remote, min_fidelity)``: open a circuit to
  ``remote`` streaming pairs until closed, then ``on_circuit_open(conn, circuit_id)`` or
  ``on_circuit_failed(conn, code, reason, node=…)``. For every circuit ending at this node
  (either end, incoming circuits included): ``on_pair(circuit_id, index, qubit, fidelity)`` in
  index order (indices from 0, as ``EndToEndPair`` gives them), and ``on_circuit_closed(
  circuit_id, code, reason, node=…)`` when it ends. ``CloseCircuit(circuit_id)``: close it
  unless it already ended (both ends may ask). ``PauseCircuit``/``ResumeCircuit(circuit_id)``
  (the accepting end only): stop and restart its generation; pairs may still arrive while
  paused, and are taken as ever.
- physical: ``on_measured(tag, outcomes)`` for each ``BellMeasure`` (two outcomes: the qubit's,
  then the pair half's) and ``MeasurePair`` (one); an empty tuple if it failed.
- time: ``on_timer(now)`` at or after ``next_deadline()``.

Outputs: ``SendTo(node, message)``: carry the message to ``node``'s transport core, best effort
(a datagram; loss, duplication, reordering and delay are survived). Physical commands
(``BellMeasure``, ``MeasurePair``, ``Correct``, ``Free``) run in order; events queued after a
physical command must reach the application only after it ran (a ``QubitReceived`` follows its
``Correct``). Events (``TransportEvent``) go to the application API.

Errors: a refused connection (no listener on the port) is ``NotFound`` (the node is there;
nothing listens, and trying again will not help until someone does; ``Unreachable`` stays for
"no route"); a full backlog ``NoMemory``; a handshake, retransmission or idle timeout
``Timeout``; a circuit that ends under a live connection the error of its close code
(``Unreachable``, ``Unsupported``, ``NoMemory``, ``Timeout``, ``PermissionDenied``); a reset by the
peer the error it names (``Unreachable`` for an abort).
"""

from qnet.transport.config import TransportConfig
from qnet.transport.core import TransportCore
from qnet.transport.events import message_from_dict

__all__ = ["TransportConfig", "TransportCore", "message_from_dict"]
