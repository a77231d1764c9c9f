"""Shared models and curriculum training loop of the set-task probes.

Used by :mod:`verification.probes.match3` and :mod:`verification.probes.composition` (tables,
figures and the command line: :mod:`verification.probes._results`). A task is a
:class:`Task`: how to pick its size parameter for a length N (the modulus M of Match3, the
alphabet k of relation composition), how to draw labelled sequences, and how to turn tokens into
features. Both tasks are *set* tasks (a label does not depend on the order of the other tokens),
so the models use no position embedding: they are length-agnostic, and a curriculum over N
carries every weight from one length to the next.

Models (identical token embedding and readout, differing only in the attention stack):

* ``tensor``: one :class:`tattn_numba.torch.TensorAttention` layer, exact gradient;
* ``poly_g<g>``: the same layer with ``method="poly", degree=g`` (the surrogate), its logit radius
  clamped after each step to :func:`radius_cap` (g, ``cap_epsilon``) by rescaling ``W_Q``;
* ``pairwise_L<l>``: l residual layers of plain softmax attention of the same width (``num_heads``
  heads of ``head_dim``), z ← z + attention(z);
* ``pairwise_L1_h<h>``: one pairwise layer with h heads, h chosen so its attention parameters
  equal the tensor layer's (4·h·head_dim·D = 6·num_heads·head_dim·D, i.e. h = 1.5·num_heads).

The readout is a per-position MLP on [embedding, last layer output] (a linear readout cannot
compare the attention's code with the query token, see :mod:`verification.probes.match3`). Every
model runs in float64, the dtype the other probes compile, so no float32 kernel is compiled.

Protocol: for each model and seed, stages N_1 < N_2 < … (``Ns``) of ``steps`` Adam steps each on
fresh seeded batches (no overfitting), weights carried from stage to stage (``curriculum``; when
False, every N starts from the same fresh initialisation: the control); at the end of each
stage, the held-out per-position accuracy on ``eval_size`` separately seeded sequences. The
surrogate models train the first ``poly_stages`` stages only, ``poly_steps`` steps each. A model
*learns* length N when its mean held-out accuracy over the seeds is at least chance (the
majority-class rate) + ``learn_margin``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

try:  # torch is optional (the [torch] extra)
    import torch
    from torch import nn
except ImportError:  # pragma: no cover - depends on the environment
    torch = None
    nn = None

SKIPPED = "torch is not installed (pip install tattn-numba[torch])"

#: Keys every preset must hold (see :func:`check_settings`).
REQUIRED = ("Ns", "steps", "batch", "eval_size", "eval_every", "seeds", "lr", "embed_dim", "num_heads",
            "head_dim", "fourier", "hidden", "target_rate", "pairwise_layers", "poly_degrees", "poly_stages",
            "poly_steps", "cap_epsilon", "learn_margin", "param_matched", "curriculum", "torch_threads")


@dataclass(frozen=True)
class Task:
    """A binary per-position set task.

    Attributes
    ----------
    name : str
        File prefix and report name.
    param : callable
        ``param(N, target_rate) -> int``: the task's size parameter for length N.
    generate : callable
        ``generate(N, param, size, rng) -> (x, y)``: integer tokens (size, N, ...) and labels (size, N).
    features : callable
        ``features(x, param, fourier) -> tensor`` (..., N, feature_dim) float64, from int tokens.
    feature_dim : callable
        ``feature_dim(fourier) -> int``.
    """

    name: str
    param: Callable
    generate: Callable
    features: Callable
    feature_dim: Callable


def fourier_features(x, period: int, fourier: int):
    """[cos 2πtx/period, sin 2πtx/period], t = 1..fourier, of an integer tensor ``x`` (float64)."""
    ang = 2 * math.pi * x[..., None].double() * torch.arange(1, fourier + 1, dtype=torch.float64) / period
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)


# --------------------------------------------------------------------------------------------
# settings and model names
# --------------------------------------------------------------------------------------------

def _positive_ints(value, name: str, *, increasing: bool = False) -> None:
    if not isinstance(value, (list, tuple)) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise ValueError(f"{name} must be a non-empty list of positive ints, got {value!r}")
    if increasing and any(b <= a for a, b in pairwise(value)):
        raise ValueError(f"{name} must be strictly increasing (a curriculum), got {value!r}")


def check_settings(settings: dict) -> dict:
    """Raise ``ValueError`` naming the first bad value of a preset; return it unchanged."""
    missing = [key for key in REQUIRED if key not in settings]
    if missing:
        raise ValueError(f"settings lack {missing}")
    _positive_ints(settings["Ns"], "Ns", increasing=True)
    for key in ("steps", "batch", "eval_size", "eval_every", "embed_dim", "num_heads", "head_dim", "fourier",
                "hidden", "poly_steps", "torch_threads"):
        _positive_ints([settings[key]], key)
    _positive_ints(settings["pairwise_layers"], "pairwise_layers", increasing=True)
    if settings["poly_degrees"]:
        _positive_ints(settings["poly_degrees"], "poly_degrees", increasing=True)
    seeds = settings["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct non-negative ints, got {seeds!r}")
    for key in ("param_matched", "curriculum"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"{key} must be a bool, got {settings[key]!r}")
    if not isinstance(settings["poly_stages"], int) or not 0 <= settings["poly_stages"] <= len(settings["Ns"]):
        raise ValueError(f"poly_stages must be an int in [0, len(Ns)], got {settings['poly_stages']!r}")
    for key, lo, hi in (("lr", 0.0, 1.0), ("target_rate", 0.0, 1.0), ("cap_epsilon", 0.0, 1.0),
                        ("learn_margin", 0.0, 0.5)):
        if not isinstance(settings[key], (int, float)) or not lo < settings[key] < hi:
            raise ValueError(f"{key} must be in ({lo}, {hi}), got {settings[key]!r}")
    return settings


def model_names(settings: dict) -> list[str]:
    """The models a preset trains, in table order."""
    names = ["tensor"] + [f"poly_g{g}" for g in settings["poly_degrees"]]
    if settings["param_matched"]:
        names.append(f"pairwise_L1_h{matched_heads(settings)}")
    return names + [f"pairwise_L{layers}" for layers in settings["pairwise_layers"]]


def matched_heads(settings: dict) -> int:
    """Heads of a one-layer pairwise attention whose 4 projections hold as many parameters as the
    tensor layer's 6 (rounded): 1.5·num_heads."""
    return max(1, round(1.5 * settings["num_heads"]))


def describe(name: str) -> str:
    """Human label of a model name."""
    if name == "tensor":
        return "tensor attention (1 layer, exact)"
    if name.startswith("poly_g"):
        return f"tensor attention (1 layer, surrogate g = {name[6:]})"
    m = re.fullmatch(r"pairwise_L(\d+)(?:_h(\d+))?", name)
    if m is None:
        raise ValueError(f"unknown model {name!r}")
    heads = f", {m.group(2)} heads (parameter-matched)" if m.group(2) else ""
    return f"pairwise attention ({m.group(1)} layer{'s' if m.group(1) != '1' else ''}{heads})"


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

if torch is not None:

    class PairwiseAttention(nn.Module):
        """Plain multi-head softmax self-attention (no mask), scale 1/√head_dim."""

        def __init__(self, embed_dim, num_heads, head_dim):
            super().__init__()
            self.h, self.hd = num_heads, head_dim
            inner = num_heads * head_dim
            self.W_Q, self.W_K, self.W_V = (nn.Linear(embed_dim, inner, bias=False) for _ in range(3))
            self.W_O = nn.Linear(inner, embed_dim, bias=False)

        def forward(self, x):
            b, s, _ = x.shape
            q, k, v = (W(x).view(b, s, self.h, self.hd).transpose(1, 2) for W in (self.W_Q, self.W_K, self.W_V))
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.hd), dim=-1)
            return self.W_O((a @ v).transpose(1, 2).reshape(b, s, self.h * self.hd))

    class SetModel(nn.Module):
        """Token features → linear embedding → residual attention stack → per-position MLP."""

        def __init__(self, name, task, settings):
            super().__init__()
            from tattn_numba.torch import TensorAttention

            s, D = settings, settings["embed_dim"]
            self.task, self.fourier = task, s["fourier"]
            self.tok = nn.Linear(task.feature_dim(s["fourier"]), D)
            if name == "tensor" or name.startswith("poly_g"):
                opts = {"method": "poly", "degree": int(name[6:])} if name.startswith("poly_g") else {}
                layers = [TensorAttention(D, s["num_heads"], s["head_dim"], **opts)]
            else:
                m = re.fullmatch(r"pairwise_L(\d+)(?:_h(\d+))?", name)
                heads = int(m.group(2)) if m.group(2) else s["num_heads"]
                layers = [PairwiseAttention(D, heads, s["head_dim"]) for _ in range(int(m.group(1)))]
            self.layers = nn.ModuleList(layers)
            self.head = nn.Sequential(nn.Linear(2 * D, s["hidden"]), nn.ReLU(), nn.Linear(s["hidden"], 1))
            self.double()

        def embed(self, x, param):
            return self.tok(self.task.features(x, param, self.fourier))

        def forward(self, x, param):
            e = z = self.embed(x, param)
            for layer in self.layers:
                z = z + layer(z)
            return self.head(torch.cat([e, z], dim=-1)).squeeze(-1)


def _operands(model, x, param):
    """The five per-head operands the tensor layer hands the core for input ``x`` (numpy)."""
    return [op.detach().numpy() for op in model.layers[0].operands(model.embed(x, param))]


def global_radius(ops, head_dim: int) -> float:
    """s·Σ_l max|Q_l|·max|K1_l|·max|K2_l| (s = 1/head_dim), maximised over the batch and heads."""
    Q, K1, K2 = (np.abs(a).max(axis=-2) for a in ops[:3])
    return float(((Q * K1 * K2).sum(-1) / head_dim).max())


def radius_cap(degree: int, epsilon: float, family: str = "chebyshev") -> float:
    """Largest radius (bisection) whose certified relative error at ``degree`` is ≤ ``epsilon``."""
    from tattn_numba.poly.exp_approx import relative_error_bound

    lo, hi = 0.0, 64.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if relative_error_bound(family, degree, mid) <= epsilon else (lo, mid)
    return lo


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

def _step(model, opt, x, y, param, cap, head_dim) -> tuple[float | None, bool]:
    """One Adam step; for the surrogate, a refused forward halves W_Q (returns loss None) and a
    radius above ``cap`` is clamped (returns clamped=True)."""
    try:
        loss = nn.functional.binary_cross_entropy_with_logits(model(x, param), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    except ValueError as exc:
        if cap is None or "too low" not in str(exc):
            raise
        with torch.no_grad():
            model.layers[0].W_Q.weight.mul_(0.5)
        return None, False
    clamped = False
    if cap is not None:
        with torch.no_grad():
            R = global_radius(_operands(model, x, param), head_dim)
            if R > cap:
                model.layers[0].W_Q.weight.mul_(cap / R)
                clamped = True
    return loss.item(), clamped


def _evaluate(model, x, y, param, name, settings) -> dict:
    import tattn_numba as ta

    with torch.no_grad():
        point = {"accuracy": float(((model(x, param) > 0).double() == y).double().mean())}
        if name == "tensor" or name.startswith("poly_g"):
            ops = _operands(model, x, param)
            point["global_radius"] = global_radius(ops, settings["head_dim"])
            if name.startswith("poly_g"):
                plan = ta.poly_plan(*ops, degree=int(name[6:]))
                point.update(radius=float(plan.radius.max()), epsilon=float(plan.epsilon.max()))
    return point


def train_curriculum(task: Task, name: str, seed: int, settings: dict) -> dict:
    """Train model ``name`` with ``seed`` through the curriculum (weights carried from stage to stage,
    or, with ``curriculum`` False, a fresh model per N); one record per stage.

    torch runs with ``torch_threads`` threads meanwhile (restored afterwards): at these sizes its
    ops gain nothing from threads, and its thread pool competes with Numba's (measured: the quick
    preset's training 63 s with one torch thread against 69–81 s with torch's default of two)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(settings["torch_threads"])
    try:
        return _train(task, name, seed, settings)
    finally:
        torch.set_num_threads(previous)


def _train(task: Task, name: str, seed: int, settings: dict) -> dict:
    s = settings
    poly = name.startswith("poly_g")
    cap = radius_cap(int(name[6:]), s["cap_epsilon"]) if poly else None
    Ns = s["Ns"][:s["poly_stages"]] if poly else s["Ns"]
    steps = s["poly_steps"] if poly else s["steps"]
    stages, trace, total = [], [], 0
    for N in Ns:
        if not stages or not s["curriculum"]:  # a fresh model: the first stage, or every N without curriculum
            torch.manual_seed(seed)
            model = SetModel(name, task, s)
            opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
        param = task.param(N, s["target_rate"])
        xt, yt = task.generate(N, param, s["eval_size"], np.random.default_rng([seed, N, 2]))
        xt_t, yt_t = torch.from_numpy(xt), torch.from_numpy(yt).double()
        data_rng = np.random.default_rng([seed, N, 1])
        times, losses, clamps, refusals = [], [], 0, 0
        for step in range(1, steps + 1):
            xb, yb = task.generate(N, param, s["batch"], data_rng)
            start = time.perf_counter()
            loss, clamped = _step(model, opt, torch.from_numpy(xb), torch.from_numpy(yb).double(), param, cap,
                                  s["head_dim"])
            if loss is None:
                refusals += 1
                continue
            times.append(time.perf_counter() - start)
            losses.append(loss)
            clamps += clamped
            if step % s["eval_every"] == 0 and step != steps:
                trace.append({"step": total + step, "N": N, **_evaluate(model, xt_t, yt_t, param, name, s)})
        total += steps
        point = _evaluate(model, xt_t, yt_t, param, name, s)
        trace.append({"step": total, "N": N, **point})
        stages.append({"N": N, "param": int(param), "positive_rate": float(yt.mean()),
                       "chance": float(max(yt.mean(), 1 - yt.mean())), **point,
                       "step_seconds": float(np.median(times)) if times else None,
                       "final_loss": float(np.mean(losses[-20:])) if losses else None,
                       "clamps": clamps, "refusals": refusals, "steps": steps})
    out = {"model": name, "seed": seed, "parameters": int(sum(p.numel() for p in model.parameters())),
           "stages": stages, "trace": trace}
    if poly:
        out.update(degree=int(name[6:]), radius_cap=cap)
    return out


def run_task(task: Task, train: Callable, settings: dict, executor) -> dict:
    """Submit one curriculum per (model, seed) to ``executor``; collect records and failures.

    ``train(name, seed, settings)`` must be a top-level (picklable) function of the task module."""
    check_settings(settings)
    if torch is None:
        return {"skipped": SKIPPED, "failures": []}
    futures = [executor.submit(train, name, seed, settings) for name in model_names(settings)
               for seed in settings["seeds"]]
    runs, failures = [], []
    for f in futures:
        try:
            runs.append(f.result())
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            failures.append(f"training raised {type(exc).__name__}: {exc}")
    for r in runs:
        for st in r["stages"]:
            if st["final_loss"] is None or not math.isfinite(st["final_loss"]):
                failures.append(f"{r['model']} (seed {r['seed']}) at N={st['N']}: loss is not finite")
    return {"settings": settings, "runs": runs, "failures": failures}
