"""qnet: a quantum internet protocol stack (physical, link, network and transport layers).

Applications start here: ``qnet.connect("alice")`` (blocking) or
``async with qnet.open_node("alice") as alice`` (trio); see ``qnet.api``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from qnet.api import AsyncNode, AsyncQubit, AsyncSocket, Node, Qubit, Socket, connect, open_node

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


def __getattr__(name: str) -> Any:
    # Imported on first use: the daemons and the CLI import qnet without needing the API.
    if name in __all__:
        import qnet.api

        return getattr(qnet.api, name)
    raise AttributeError(f"module 'qnet' has no attribute {name!r}")
