"""Numba compute of the PS (no I/O, no policy): hash index, optimizer kernels, id routing, float16, cache
prefetch, the OpenMP thread policy and where numba caches compiled kernels."""
