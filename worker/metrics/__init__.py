"""Model-quality metrics computed on the worker (deep insight)."""
