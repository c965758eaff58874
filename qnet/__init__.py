"""qnet: a quantum internet protocol stack (physical, link, network and transport layers)."""

__version__ = "0.1.0"
