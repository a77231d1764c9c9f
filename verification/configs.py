"""Named configurations of the report: which probes run, at which sizes.

``tiny`` is for the test suite (seconds), ``quick`` is the README's main job (about 65 s on
2 cores from a cold Numba cache without PyTorch, 90 s with it), ``full`` is for a bigger
machine or a Dask cluster (hours on 2 cores).
"""

from __future__ import annotations

import copy

from . import match3_construction
from .probes import accuracy, adversarial, composition, hardness, match3, per_row, scaling, threshold

#: (name in the report and in results.json, module with PRESETS, run, render), in report order.
PROBES = (
    ("accuracy", accuracy),
    ("adversarial", adversarial),
    ("threshold", threshold),
    ("scaling", scaling),
    ("per_row", per_row),
    ("hardness", hardness),
    ("match3", match3),
    ("match3_construction", match3_construction),
    ("composition", composition),
)

NAMES = ("tiny", "quick", "full")


def get(name: str) -> dict:
    """A deep copy of the named configuration: {probe name: settings}."""
    if name not in NAMES:
        raise ValueError(f"unknown configuration {name!r}; expected one of {list(NAMES)}")
    return {probe: copy.deepcopy(module.PRESETS[name]) for probe, module in PROBES}
