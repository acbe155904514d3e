"""Parameter-server role: the embedding store and the gRPC service over it."""
from ps.kernels import numba_cache

numba_cache.configure()  # before any kernel module imports numba
