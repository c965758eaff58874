"""``qnet interop``: a black-box conformance suite for the qnet wire protocol (proto/qnet/v1).

It talks to daemons only through the generated stubs of ``qnet.v1`` (grpcio), so it can check
any implementation that speaks the protocol: it imports nothing of qnet's daemons or layers.
Modules: ``targets`` (which daemons, from a run directory or addresses), ``tls`` (mutual TLS
from the network's certificate files), ``wire`` (calls, streams and errors), ``stats``
(sample-size-derived tolerances), ``spec_peer`` (an independent Peer-protocol endpoint),
``registry`` (cases and outcomes), ``cases_*`` (the cases), ``report`` (matrix, table, JUnit
XML) and ``runner`` (the command).
"""
