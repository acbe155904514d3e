"""The gRPC service of a shard: the servicer over `ShardState`, the server, RPC metrics."""
