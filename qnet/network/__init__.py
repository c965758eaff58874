"""Network layer: link-state routing, circuits, entanglement swapping, Pauli frames."""
