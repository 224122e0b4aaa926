"""Benchmark: tensorcompress decompositions against TensorLy (numpy and pytorch back-ends), same tensors, CPU.

Run ``python benchmarks/decompositions.py`` (about 2-3 minutes on 2 quiet cores) or ``--quick`` (smaller tensors,
one repeat). Times are wall-clock ``time.perf_counter`` medians over ``--repeats`` runs (each run a full
decomposition; the three methods interleaved in every repeat so a busy machine slows them alike; one untimed warm-up
on a small tensor first). Errors are ``||X - X_hat|| / ||X||`` from the dense reconstruction in float64. Every
method gets the same tensor, rank, initialisation kind and iteration count (``tol=0`` so iteration counts match).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if "--threads" in sys.argv:  # must reach NumPy's BLAS before it is imported
    _n = sys.argv[sys.argv.index("--threads") + 1]
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _n

import numpy as np  # noqa: E402
import tensorly as tl  # noqa: E402
import torch  # noqa: E402
from tensorly.decomposition import parafac, tensor_train  # noqa: E402
from tensorly.decomposition import tucker as tl_tucker  # noqa: E402

import tensorcompress as tc  # noqa: E402
from tensorcompress.data.synthetic import random_cp, random_tt, random_tucker  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def rel_err(x: torch.Tensor, approx) -> float:
    approx = torch.as_tensor(np.asarray(approx)) if not isinstance(approx, torch.Tensor) else approx
    x = x.double()
    return float(torch.linalg.vector_norm(x - approx.double()) / torch.linalg.vector_norm(x))


def run_peers(x: torch.Tensor, ours, peer, to_dense, repeats: int) -> list[tuple[str, float, float]]:
    """Time ``ours(x)`` and ``peer(x)`` on TensorLy's numpy and pytorch back-ends, the three interleaved in each
    repeat (so a busy machine slows them alike); return (name, median seconds, error) rows."""
    x_np = x.numpy()

    def peer_on(backend: str):
        tl.set_backend(backend)
        try:
            return peer(x_np if backend == "numpy" else x)
        finally:
            tl.set_backend("pytorch")

    methods = [("tensorcompress", lambda: ours(x), lambda r: r.to_tensor()),
               ("tensorly (numpy)", lambda: peer_on("numpy"), to_dense),
               ("tensorly (pytorch)", lambda: peer_on("pytorch"), to_dense)]
    times: dict[str, list[float]] = {name: [] for name, _, _ in methods}
    results = {}
    for _ in range(repeats):
        for name, fn, _ in methods:
            t, results[name] = timed(fn, 1)
            times[name].append(t)
    rows = []
    for name, _, dense in methods:
        res = results[name]
        if name == "tensorly (numpy)":
            tl.set_backend("numpy")
            approx = dense(res)
            tl.set_backend("pytorch")
        else:
            approx = dense(res)
        rows.append((name, statistics.median(times[name]), rel_err(x, approx)))
    return rows


def print_table(title: str, rows: list[tuple[str, str, float, float]]) -> None:
    print(f"\n{title}")
    print(f"| {'task':<38} | {'method':<18} | {'time (s)':>9} | {'rel. error':>12} | {'speed-up':>8} |")
    print(f"|{'-' * 40}|{'-' * 20}|{'-' * 11}|{'-' * 14}|{'-' * 10}|")
    by_task: dict[str, list] = {}
    for task, method, t, err in rows:
        by_task.setdefault(task, []).append((method, t, err))
    for task, items in by_task.items():
        ours = items[0][1]
        for method, t, err in items:
            print(f"| {task:<38} | {method:<18} | {t:9.3f} | {err:12.6e} | {t / ours:7.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller tensors, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (median reported)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and NumPy's BLAS (default: the libraries' defaults)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    dtype = torch.float64
    print(f"torch {torch.__version__}, tensorly {tl.__version__}, numpy {np.__version__}, "
          f"torch.get_num_threads() = {torch.get_num_threads()}, dtype float64, CPU, "
          f"time.perf_counter median of {repeats}")

    # warm-up (library loading, first-call overheads)
    w = random_cp((10, 10, 10), 2, seed=0, dtype=dtype).tensor
    tc.cp_als(w, 2, n_iter_max=2)
    tl.set_backend("pytorch")
    parafac(w, 2, n_iter_max=2)

    n_cp = 100 if args.quick else 200
    rows = []
    # CP-ALS: rank 20, 50 sweeps, SVD init, on a rank-20 tensor with 10 % noise
    x = random_cp((n_cp,) * 3, 20, noise=0.1, seed=0, dtype=dtype).tensor
    task = f"CP-ALS {n_cp}^3, R=20, 50 it"
    cp_rows = run_peers(
        x,
        lambda x: tc.cp_als(x, 20, n_iter_max=50, tol=0, init="svd"),
        lambda xb: parafac(xb, 20, n_iter_max=50, tol=0, init="svd"),
        tl.cp_to_tensor, repeats,
    )
    rows += [(task, method, t, err) for method, t, err in cp_rows]

    # HOOI: ranks 10, 10 sweeps, HOSVD init, on a multilinear-rank-10 tensor with 10 % noise
    x = random_tucker((n_cp,) * 3, 10, noise=0.1, seed=1, dtype=dtype).tensor
    task = f"Tucker HOOI {n_cp}^3, R=(10,10,10), 10 it"
    for method, t, err in run_peers(
        x,
        lambda x: tc.tucker(x, 10, n_iter_max=10, tol=0),
        lambda xb: tl_tucker(xb, [10, 10, 10], n_iter_max=10, tol=0, init="svd"),
        tl.tucker_to_tensor, repeats,
    ):
        rows.append((task, method, t, err))

    # TT-SVD: order 5, fixed ranks 8
    n_tt = 12 if args.quick else 20
    x = random_tt((n_tt,) * 5, 8, noise=0.05, seed=2, dtype=dtype).tensor
    task = f"TT-SVD {n_tt}^5, ranks 8"
    for method, t, err in run_peers(
        x,
        lambda x: tc.tt_svd(x, max_rank=8),
        lambda xb: tensor_train(xb, [1, 8, 8, 8, 8, 1]),
        tl.tt_to_tensor, repeats,
    ):
        rows.append((task, method, t, err))
    print_table("Decompositions (speed-up = time / tensorcompress's time; > 1 means tensorcompress is faster)", rows)

    # scaling of CP-ALS with the tensor size
    sizes = (25, 50, 100) if args.quick else (50, 100, 200)
    scale_rows = []
    for n in sizes:
        if n == n_cp:  # measured above
            measured = cp_rows
        else:
            x = random_cp((n,) * 3, 20, noise=0.1, seed=0, dtype=dtype).tensor
            measured = run_peers(
                x,
                lambda x: tc.cp_als(x, 20, n_iter_max=50, tol=0),
                lambda xb: parafac(xb, 20, n_iter_max=50, tol=0, init="svd"),
                tl.cp_to_tensor, repeats,
            )
        scale_rows += [(f"CP-ALS {n}^3, R=20, 50 it", method, t, err) for method, t, err in measured]
    print_table("CP-ALS time against tensor size", scale_rows)


if __name__ == "__main__":
    main()
