"""Node composition: the driver that wires a node's layer cores to its channel backend access
and its peer transport, the same code in a daemon and in ``qnet.sim``."""
