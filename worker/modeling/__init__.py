"""The model-building library: `MonolithModel`, feature columns, segment configs, heads, losses, layers, hooks."""
