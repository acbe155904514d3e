"""Parameter-server role: the embedding store, its checkpoints, the gRPC service over it and the client that
reaches shards (docs/architecture.md has the subpackages and their import rules)."""
from ps.kernels import numba_cache

numba_cache.configure()  # before any kernel module imports numba
