"""Shared figure set-up for the probes (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["finish", "plt", "save"]


def save(fig, out_dir, name: str) -> str:
    """Write ``fig`` as ``out_dir/name`` (PNG, 120 dpi), close it and return ``name``."""
    fig.tight_layout()
    fig.savefig(out_dir / name, dpi=120)
    plt.close(fig)
    return name


def finish(ax, xlabel: str, ylabel: str, title: str | None = None, *, logx: int | None = None,
           logy: bool = False, grid: str | None = None, legend: float | None = 8) -> None:
    """Label one panel: log scales (``logx``: the base of a log x axis), axis labels, title, a grid
    (``grid``: ``"major"`` or ``"both"``) and a legend of font size ``legend`` (None: no legend)."""
    if logx:
        ax.set_xscale("log", base=logx)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    if grid:
        ax.grid(True, which=grid, alpha=0.3)
    if legend:
        ax.legend(fontsize=legend)
