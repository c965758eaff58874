"""Transport layer: ports, connections, pair streams, teleportation, classical messages."""
