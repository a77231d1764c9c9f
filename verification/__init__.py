"""Empirical verification of the tensor-attention theory, as a report.

``python -m verification --config quick --out DIR`` runs probes that measure the polynomial
surrogate's output and gradient errors against the exact kernels next to their certified
bounds, the degree and rank the theory needs as the entry bound crosses (log n)^{1/3}, the
runtime scaling of both methods, the gain of per-row intervals, and hard instances built
around the entry-bound threshold (SPEC §5–§6); it writes ``report.md`` with PNG figures and
``results.json`` with every number.

Modules: :mod:`.bounds` (the certified bounds and the theory's degree shape), :mod:`.probes`
(accuracy, adversarial search, threshold, scaling, per-row gain, hard instances, Match3; each
with ``PRESETS``, ``run`` and ``render``), :mod:`.hard_instances` (Gap-3-MaxIP instances),
:mod:`.timing` (the timing loop and log-log fit shared with the benchmarks), :mod:`.configs`
(named configurations), :mod:`.execution` (executors: in-process, process pool, Dask),
:mod:`.report` (running and writing), :mod:`.cli`. ``verification.hardness`` and
``verification.match3`` are the former names of the last two probes.
"""

__all__ = ["bounds", "configs", "execution", "probes", "report", "timing"]
