"""The node daemon (qnetd) and the local network launcher (``qnet up``/``down``/``status``/
``links``).

``node`` composes one daemon from the node driver, the gRPC peer transport and the two services
of node.proto (``admin``: NodeAdmin, ``link_service``: LinkLayer, with ``wire`` converting);
``config`` holds its settings. ``rundir`` keeps a launched network's state on disk, ``procs``
reads and signals daemon processes by PID, ``launcher`` starts and stops a network, and
``control`` asks a running one for its status and links.
"""
