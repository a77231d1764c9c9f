"""Probes of the report. Each module exposes

``PRESETS`` : dict
    Settings for the named configurations ``"tiny"`` (CI), ``"quick"``, ``"full"``.
``run(settings, executor) -> dict``
    Submits independent sweep points (top-level, picklable task functions) to ``executor``
    and returns JSON-serialisable results, including ``"failures"``: a list of strings, one
    per check that did not hold (a certified bound exceeded, say).
``render(results, out_dir) -> list[dict]``
    Writes PNG figures into ``out_dir`` and returns report sections: ``title``, ``text`` (one
    paragraph: what the figure shows and whether the theory's prediction held, computed from
    the results), ``figure`` (file name or None), ``ok``.
"""

from . import accuracy, per_row, scaling, threshold

__all__ = ["accuracy", "per_row", "scaling", "threshold"]
