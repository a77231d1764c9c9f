"""Exact streaming tensor-attention kernels (CPU: :mod:`.cpu`)."""
