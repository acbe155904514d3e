"""What travels between PS clients and shards: packed tensors, zero-copy row messages, configs as protos."""
