"""Parameter-server role: the embedding store and the gRPC service over it."""
