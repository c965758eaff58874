"""Applications people run on a qnet network, each an ``async def`` taking the API nodes it
needs (``qnet.open_node`` or ``SimNetwork.open_node``) and returning a result dataclass whose
``summary()`` is what ``qnet app NAME`` prints:

- ``teleport.teleport``: teleportation checked by tomography;
- ``chsh.chsh``: a CHSH Bell test;
- ``qkd.qkd``: BBM92 / BB84 key distribution (sifting, QBER, Cascade, Toeplitz privacy
  amplification, HMAC-authenticated messages) and an AES-GCM encrypted file;
- ``ghz.ghz``: a GHZ state over a centre and its leaves, with its fidelity witness;
- ``cnot.distributed_cnot``: a CNOT across two nodes from one EPR pair;
- ``grover.grover``: two-qubit Grover search with one qubit per node.

Each runs unchanged against daemons and in ``qnet.sim``. Errors of their own are in
``qnet.apps.errors``.
"""
