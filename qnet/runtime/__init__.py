"""Runtime: clocks, timers, transports and the trio/gRPC bridge."""
