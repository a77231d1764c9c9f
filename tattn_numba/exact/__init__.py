"""Exact streaming tensor-attention kernels: :mod:`.cpu` (Numba, njit/prange) and :mod:`.cuda`
(numba-cuda, imported only through the registry when a GPU is requested)."""
