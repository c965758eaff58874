"""Daemon programs (qnetd, qnet-channeld), installed as the package ``qnet.daemons``."""
