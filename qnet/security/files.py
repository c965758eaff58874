"""The names of the files in a network's certificate directory (see ``certs``). Kept free of
``cryptography``, which daemons import only when TLS is on."""

from __future__ import annotations

import os
from pathlib import Path

from qnet.security.identity import Identity, Role

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
APP_TOKEN = "app.token"
KEY_MODE = 0o600
CERT_MODE = 0o644


def file_stem(identity: Identity) -> str:
    """``node-alice``, ``channeld`` or ``app``: the name of its .pem and .key files."""
    return f"node-{identity.name}" if identity.role is Role.NODE else identity.role.value


def cert_path(directory: Path, identity: Identity) -> Path:
    return directory / f"{file_stem(identity)}.pem"


def key_path(directory: Path, identity: Identity) -> Path:
    return directory / f"{file_stem(identity)}.key"


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only, whatever the umask or the mode
    of a file it replaces."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_MODE)
    try:
        os.fchmod(fd, KEY_MODE)
        os.write(fd, data)
    finally:
        os.close(fd)
