"""Link layer: entanglement generation (EGP), distributed queue, purification."""
