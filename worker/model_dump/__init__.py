"""A model described and runnable without its Python code: `monolith dump`, `train --from-dump` (docs/model_dump.md)."""
