"""Node names and link names: the one place that says what a valid name is.

Kept free of heavy imports: the CLI and the topology loader need it before anything starts.
"""

from __future__ import annotations

import re

from qnet.errors import InvalidArgument

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def check_node_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidArgument(
            f"node name must be 1-64 characters of letters, digits, '_', '.', '-', got {name!r}"
        )


def link_id(a: str, b: str) -> str:
    """Canonical link name: the two node names in order, joined by '|'."""
    return f"{a}|{b}" if a < b else f"{b}|{a}"
