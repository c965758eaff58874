"""The public application API: ``qnet.connect`` (blocking) and ``qnet.open_node`` (trio)."""

from qnet.api.aio import AsyncNode, AsyncQubit, AsyncSocket, open_node
from qnet.api.sync import Node, Qubit, Socket, connect

__all__ = [
    "AsyncNode",
    "AsyncQubit",
    "AsyncSocket",
    "Node",
    "Qubit",
    "Socket",
    "connect",
    "open_node",
]
