"""GPU benchmark: exact kernel throughput against the card's matrix-product rate, and the
surrogate's forward+backward time and scaling slope up to n = 2^20.

Run on a machine with an NVIDIA GPU (one command)::

    python -m benchmarks.cuda --out docs/cuda_benchmarks.md

What it measures (inputs already on the GPU, entries uniform in [−1, 1], every time the minimum
of ``--repeat`` runs after a warm-up, each ended by ``cuda.synchronize()``):

* the card's float64 and float32 matrix-product rates: cuBLAS through CuPy or PyTorch when one of them is
  installed with CUDA, and always the package's own tiled GEMM (:mod:`tattn_numba.poly._cuda_gemm`),
  on 4096 × 4096 products (2·4096³ flops each);
* the exact kernel (d = dv = ``--d``, n = m1 = m2 over ``--exact-sizes``, float32 and float64
  inputs, each computed in its own precision): forward and forward+backward seconds and the
  executed TFLOP/s, counting 2·(d + dv) flops per (i, j1, j2) for the forward and 8·(d + dv)
  for the backward's two passes (logits, dS, Σ P·V and Σ dZ·K per pair and pass);
* the surrogate (``--poly-d``, ``--degree``) over ``--poly-sizes``: forward+backward seconds,
  and the least-squares slope of log(time) against log(n) (theory: 1 + o(1)).

The Markdown (and a JSON file next to it) records the device name and every number. With
``NUMBA_ENABLE_CUDASIM=1`` the script also runs on the simulator with tiny sizes (as a test
does), where the numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

import tattn_numba as ta
from tattn_numba import _cuda
from verification.timing import best_time, loglog_slope


def _device_inputs(cuda, rng, n: int, d: int, dv: int, dtype) -> list:
    shapes = [(n, d), (n, d), (n, d), (n, dv), (n, dv), (n, dv)]
    return [cuda.to_device(rng.uniform(-1.0, 1.0, s).astype(dtype)) for s in shapes]


def cublas_rates(size: int, repeat: int) -> dict:
    """float64 and float32 matrix-product TFLOP/s by cuBLAS (CuPy or PyTorch), if available."""
    flops = 2.0 * size**3
    try:
        import cupy  # noqa: PLC0415 - optional, only for the reference rate

        rates = {}
        for dtype in (np.float64, np.float32):
            a = cupy.random.random((size, size)).astype(dtype)
            seconds = best_time(lambda: a @ a, repeat, synchronize=cupy.cuda.Device().synchronize)
            rates[np.dtype(dtype).name] = flops / seconds / 1e12
        return {"library": f"CuPy {cupy.__version__} (cuBLAS)", **rates}
    except ImportError:
        pass
    try:
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = False  # a true float32 rate, not TF32
            rates = {}
            for dtype in (torch.float64, torch.float32):
                a = torch.rand(size, size, device="cuda", dtype=dtype)
                seconds = best_time(lambda: a @ a, repeat, synchronize=torch.cuda.synchronize)
                rates[str(dtype).removeprefix("torch.")] = flops / seconds / 1e12
            return {"library": f"PyTorch {torch.__version__} (cuBLAS, TF32 off)", **rates}
    except ImportError:
        pass
    return {}


def own_gemm_rate(cuda, size: int, repeat: int) -> float:
    """float64 TFLOP/s of the package's tiled GEMM on a size × size product."""
    from tattn_numba.poly._cuda_gemm import gemm  # noqa: PLC0415 - needs a GPU

    rng = np.random.default_rng(0)
    a = cuda.to_device(rng.random((size, size)))
    c = cuda.device_array((size, size))
    seconds = best_time(lambda: gemm(a, a, c), repeat, synchronize=cuda.synchronize)
    return 2.0 * size**3 / seconds / 1e12


def exact_rows(cuda, sizes, d: int, repeat: int) -> list[dict]:
    rng = np.random.default_rng(1)
    rows = []
    for dtype in (np.float64, np.float32):
        for n in sizes:
            *X, dO = _device_inputs(cuda, rng, n, d, d, dtype)
            fwd = best_time(lambda: ta.attention(*X, device="cuda"), repeat, synchronize=cuda.synchronize)
            both = best_time(lambda: ta.attention_grad(*X, dO, device="cuda"), repeat, synchronize=cuda.synchronize)
            pairs = float(n) ** 3
            rows.append({
                "dtype": np.dtype(dtype).name, "n": n, "forward_s": fwd, "forward_backward_s": both,
                "forward_tflops": 2 * (2 * d) * pairs / fwd / 1e12,
                "forward_backward_tflops": 10 * (2 * d) * pairs / both / 1e12,
            })
            print(f"exact {rows[-1]['dtype']} n={n}: fwd {fwd:.4g} s ({rows[-1]['forward_tflops']:.3g} TFLOP/s), "
                  f"fwd+bwd {both:.4g} s ({rows[-1]['forward_backward_tflops']:.3g} TFLOP/s)", flush=True)
    return rows


def poly_rows(cuda, sizes, d: int, degree: int, repeat: int) -> list[dict]:
    rng = np.random.default_rng(2)
    rows = []
    for n in sizes:
        *X, dO = _device_inputs(cuda, rng, n, d, d, np.float64)
        options = {"device": "cuda", "method": "poly", "degree": degree}
        fwd = best_time(lambda: ta.attention(*X, **options), repeat, synchronize=cuda.synchronize)
        both = best_time(lambda: ta.attention_grad(*X, dO, **options), repeat, synchronize=cuda.synchronize)
        rows.append({"n": n, "forward_s": fwd, "forward_backward_s": both})
        print(f"poly n={n}: fwd {fwd:.4g} s, fwd+bwd {both:.4g} s", flush=True)
    return rows


def _markdown(result: dict, command: str) -> str:
    lines = [
        "# CUDA benchmarks",
        "",
        f"Device: **{result['device']}** (compute capability {result['compute_capability']}), "
        f"{'the numba-cuda simulator (numbers meaningless)' if result['simulator'] else 'real GPU'}; "
        f"Python {result['python']}, numba-cuda {result['numba_cuda']}.",
        "",
        f"Command: `{command}`",
        "",
        f"## Matrix-product rate ({result['gemm_size']} × {result['gemm_size']} products)",
        "",
        "| implementation | TFLOP/s |",
        "|---|---:|",
        f"| tattn_numba tiled GEMM (numba-cuda) float64 | {result['own_gemm_tflops']:.3g} |",
    ]
    blas = result["cublas"]
    for key in ("float64", "float32"):
        if key in blas:
            lines.append(f"| {blas['library']} {key} | {blas[key]:.3g} |")
    if not blas:
        lines.append("| cuBLAS | not measured (neither CuPy nor a CUDA PyTorch installed) |")
    references = {"float64": blas.get("float64", result["own_gemm_tflops"]), "float32": blas.get("float32")}
    lines += [
        "",
        f"## Exact kernel (d = dv = {result['exact_d']}, n = m1 = m2; each input dtype computed in its own precision)",
        "",
        "Executed flops: 2·(d + dv) per (i, j1, j2) forward, 8·(d + dv) backward (two passes). "
        "Share: of the matrix-product rate of the same dtype (cuBLAS; for float64 without cuBLAS the "
        "tiled GEMM; for float32 without cuBLAS not measured).",
        "",
        "| inputs | n | forward s | TFLOP/s | share | forward+backward s | TFLOP/s | share |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def share(tflops, dtype):
        return "—" if references[dtype] is None else f"{tflops / references[dtype]:.1%}"

    for row in result["exact"]:
        lines.append(
            f"| {row['dtype']} | {row['n']} | {row['forward_s']:.4g} | {row['forward_tflops']:.3g} | "
            f"{share(row['forward_tflops'], row['dtype'])} | {row['forward_backward_s']:.4g} | "
            f"{row['forward_backward_tflops']:.3g} | {share(row['forward_backward_tflops'], row['dtype'])} |"
        )
    lines += [
        "",
        f"## Surrogate (d = dv = {result['poly_d']}, degree {result['degree']}, float64)",
        "",
        "| n | forward s | forward+backward s |",
        "|---:|---:|---:|",
    ]
    for row in result["poly"]:
        lines.append(f"| {row['n']} | {row['forward_s']:.4g} | {row['forward_backward_s']:.4g} |")
    lines += [
        "",
        f"Log-log slope: forward {result['poly_slope_forward']:.3f}, "
        f"forward+backward {result['poly_slope_forward_backward']:.3f}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exact-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--d", type=int, default=16, help="d = dv of the exact runs")
    parser.add_argument("--poly-sizes", type=int, nargs="+", default=[2**k for k in range(10, 21, 2)])
    parser.add_argument("--poly-d", type=int, default=8)
    parser.add_argument("--degree", type=int, default=4)
    parser.add_argument("--gemm-size", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=None, help="Markdown file to write (a .json is written next to it)")
    args = parser.parse_args(argv)

    cuda = _cuda.require()
    device = cuda.get_current_device()
    name = getattr(device, "name", "numba-cuda simulator")
    name = name.decode() if isinstance(name, bytes) else str(name)
    result = {
        "device": name, "compute_capability": ".".join(map(str, device.compute_capability)),
        "simulator": _cuda.simulator_enabled(), "python": platform.python_version(),
        "numba_cuda": _numba_cuda_version(),
        "gemm_size": args.gemm_size, "own_gemm_tflops": own_gemm_rate(cuda, args.gemm_size, args.repeat),
        "cublas": cublas_rates(args.gemm_size, args.repeat),
        "exact_d": args.d, "exact": exact_rows(cuda, args.exact_sizes, args.d, args.repeat),
        "poly_d": args.poly_d, "degree": args.degree,
        "poly": poly_rows(cuda, args.poly_sizes, args.poly_d, args.degree, args.repeat),
    }
    sizes = [row["n"] for row in result["poly"]]
    result["poly_slope_forward"] = loglog_slope(sizes, [row["forward_s"] for row in result["poly"]])
    result["poly_slope_forward_backward"] = loglog_slope(sizes, [row["forward_backward_s"] for row in result["poly"]])
    command = "python -m benchmarks.cuda " + " ".join(argv if argv is not None else sys.argv[1:])
    text = _markdown(result, command.strip())
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _numba_cuda_version() -> str:
    from importlib.metadata import version  # noqa: PLC0415

    return version("numba-cuda")


if __name__ == "__main__":
    main()
