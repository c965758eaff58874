"""The channel backend's driver (gRPC service around the physical core) and its client."""
