"""The embedding store: `ShardState` (one shard's tables, dense variables and global step), `EmbeddingTable`
and its rows, admission, expiry, initializers and optimizer steps."""
