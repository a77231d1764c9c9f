"""Shared figure set-up for the probes (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save"]


def save(fig, out_dir, name: str) -> str:
    """Write ``fig`` as ``out_dir/name`` (PNG, 120 dpi), close it and return ``name``."""
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=120)
    plt.close(fig)
    return name
