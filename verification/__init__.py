"""Empirical verification of the tensor-attention theory, as a report.

``python -m verification --config quick --out DIR`` runs probes that measure the polynomial
surrogate's output and gradient errors against the exact kernels next to their certified
bounds, the degree and rank the theory needs as the entry bound crosses (log n)^{1/3}, the
runtime scaling of both methods, the gain of per-row intervals, and hard instances built
around the entry-bound threshold (SPEC §5–§6); it writes ``report.md`` with PNG figures and
``results.json`` with every number.

Modules: :mod:`.bounds` (the certified bounds and the theory's degree shape), :mod:`.probes`
(accuracy, threshold, scaling, per-row gain), :mod:`.hard_instances` and :mod:`.hardness`
(Gap-3-MaxIP instances and their probes), :mod:`.configs` (named configurations),
:mod:`.execution` (executors: in-process, process pool, Dask), :mod:`.report` (running and
writing), :mod:`.cli`.
"""

__all__ = ["bounds", "configs", "execution", "probes", "report"]
