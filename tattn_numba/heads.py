"""Head layouts: which key/value batch entry each query batch entry attends with.

Q has shape ``(..., H, n, d)`` and K1, K2, V1, V2 share ``(..., Hk, m, ·)``. The last leading
axis is the head axis: when ``H`` is a multiple of ``Hk`` (grouped heads, GQA; ``Hk = 1`` is
multi-query attention) query head ``h`` uses key/value head ``h // (H // Hk)``, the convention
of PyTorch's ``scaled_dot_product_attention(enable_gqa=True)``. Every other leading axis
broadcasts as in NumPy (equal sizes, or one of them 1; missing axes count as 1). The output
has the broadcast leading shape, :attr:`HeadLayout.batch_shape`.

Kernels see batch-flattened arrays: the output and Q have ``B = prod(batch_shape)`` entries,
the keys and values ``Bk = prod(key_shape)``, and :attr:`HeadLayout.key_batch` (B,) gives the
key entry of every output entry, so keys and values are never repeated. Q is expanded to B
entries only where it broadcasts (a copy of Q's size times the broadcast factor), and its
gradient summed back (:attr:`HeadLayout.expands_query`; the device's array operations
``take_batches`` and ``sum_batches`` do both). The key and value gradients are
accumulated directly into their own Bk entries by the implementations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["HeadLayout", "head_layout"]


@dataclass(frozen=True, eq=False)
class HeadLayout:
    """How the flattened query batch maps onto the flattened key/value batch.

    Attributes
    ----------
    batch_shape : tuple
        Leading dimensions of the output (and of ``dO``).
    query_shape, key_shape : tuple
        Leading dimensions of Q and of K1, K2, V1, V2.
    query_batch, key_batch : ndarray of int64, shape (B,)
        The flat entry of Q, and of the keys/values, that output entry ``b`` uses
        (``B = prod(batch_shape)``); read-only.
    """

    batch_shape: tuple
    query_shape: tuple
    key_shape: tuple
    query_batch: np.ndarray
    key_batch: np.ndarray

    @property
    def query_entries(self) -> int:
        """``Bq``: how many flat batch entries Q has."""
        return int(np.prod(self.query_shape, dtype=np.int64))

    @property
    def key_entries(self) -> int:
        """``Bk``: how many flat key/value batch entries there are."""
        return int(np.prod(self.key_shape, dtype=np.int64))

    @property
    def expands_query(self) -> bool:
        """Whether Q broadcasts (output entries share a query entry): Q is then expanded for
        the kernels and dQ summed back."""
        return self.query_shape != self.batch_shape

    @property
    def shares_keys(self) -> bool:
        """Whether several output entries use one key/value entry (grouped heads or broadcast)."""
        return self.key_shape != self.batch_shape

    @property
    def group(self) -> int:
        """How many output entries use each key/value entry (1 without sharing)."""
        return len(self.key_batch) // self.key_entries

    def groups(self):
        """``(kb, members)`` for every key/value entry kb: the batch entries (int64 array) that
        attend with it, the group that shares its keys, values and their summaries."""
        for kb in range(self.key_entries):
            yield kb, np.flatnonzero(self.key_batch == kb)

    def describe(self) -> str:
        """``"H=8 query heads over Hk=2 key/value heads"`` style text for messages and reports."""
        if not self.shares_keys:
            return "one key/value head per query head"
        return (f"{len(self.key_batch)} query entries {self.batch_shape} over {self.key_entries} "
                f"key/value entries {self.key_shape}")


def _index_grid(shape: tuple, padded: tuple) -> np.ndarray:
    return np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64).reshape(padded)


def head_layout(query_shape: tuple, key_shape: tuple, keys_name: str = "K1, K2, V1, V2",
                first_key: str = "K1") -> HeadLayout:
    """The :class:`HeadLayout` of Q's leading dimensions and the keys' and values'.

    ``keys_name`` and ``first_key`` name the key and value operands in messages (n-way attention
    has ``keys[a]`` and ``values[a]``).

    Raises
    ------
    ValueError
        When the head axis (the last leading axis) has ``H`` query heads and ``Hk`` key/value
        heads with ``H`` not a multiple of ``Hk`` (and neither is 1), or another leading axis
        does not broadcast; the message names Q and the keys and gives both shapes.
    """
    query_shape, key_shape = tuple(int(x) for x in query_shape), tuple(int(x) for x in key_shape)
    rank = max(len(query_shape), len(key_shape))
    q = (1,) * (rank - len(query_shape)) + query_shape
    k = (1,) * (rank - len(key_shape)) + key_shape
    batch_shape = []
    for axis, (a, b) in enumerate(zip(q, k)):
        if a == b or b == 1:
            batch_shape.append(a)
        elif a == 1:
            batch_shape.append(b)
        elif axis == rank - 1 and a % b == 0:
            batch_shape.append(a)
        elif axis == rank - 1:
            raise ValueError(
                f"Q has {a} query heads and {keys_name} have {b} key/value heads (the last leading axis); "
                f"grouped heads need the query heads to be a multiple of the key/value heads "
                f"(query head h uses key/value head h // (H // Hk)), got Q leading dimensions {query_shape} "
                f"and {first_key} leading dimensions {key_shape}"
            )
        else:
            raise ValueError(
                f"the leading dimensions of Q {query_shape} and of {keys_name} {key_shape} do not broadcast "
                f"(axis {axis - rank - 2} has {a} against {b}; sizes must be equal or 1)"
            )
    batch_shape = tuple(batch_shape)
    keys = _index_grid(key_shape, k)
    if rank and 1 < k[-1] < q[-1]:  # grouped heads: query head h reads key head h // group
        keys = np.repeat(keys, q[-1] // k[-1], axis=-1)
    key_batch = np.ascontiguousarray(np.broadcast_to(keys, batch_shape).reshape(-1))
    query_batch = np.ascontiguousarray(np.broadcast_to(_index_grid(query_shape, q), batch_shape).reshape(-1))
    for x in (key_batch, query_batch):
        x.setflags(write=False)
    return HeadLayout(batch_shape, query_shape, key_shape, query_batch, key_batch)
