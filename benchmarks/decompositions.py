"""Benchmark: tensorcompress decompositions against TensorLy (numpy and pytorch back-ends), same tensors, CPU, in
float32 and float64.

Run ``python benchmarks/decompositions.py --threads 1`` (add ``--quick`` for a smoke run with small tensors and one
repeat; ``--sizes 100 250`` picks the cube sides). Times are wall-clock ``time.perf_counter`` medians over
``--repeats`` runs, the methods interleaved in every repeat so that a busy machine slows them alike; the first call
on each shape is untimed (library loading, first-call overheads). Errors are ``||X - X_hat|| / ||X||`` with
``X_hat`` reconstructed in float64 from each result's stored numbers (TensorLy's read through ``from_tensorly``), so
that the rounding of a float32 reconstruction does not blur a float32 comparison. Every method gets the same tensor,
rank, initialisation kind and iteration count (``tol=0``).

Printed per dtype:

* CP-ALS, HOOI and TT-SVD against TensorLy; ``speed-up`` = the faster TensorLy back-end's time / ours. CP-ALS is
  timed twice: with ``init="svd"`` (both libraries start from the leading singular vectors of each unfolding;
  TensorLy computes them by a full SVD of the unfolding, which dominates its time on large tensors) and with
  ``init="random"`` (uniform [0, 1) factors, seeded: a negligible start, so the time is the sweeps');
* CP-ALS's floor: two GEMMs per sweep (the MTTKRP-sized products ``X_(N) A_N`` and ``X_(1)^T A_1``), each at the
  fastest of its four layouts, times the number of sweeps; ``sweeps / floor`` = the time of the sweeps alone (CP-ALS
  started from a given CPTensor, the result of one sweep, so that no initialisation is timed) over that floor;
* an ill-conditioned case: an exact multilinear-rank-16 tensor of size 30^3 with a graded core (unfolding spectra
  over about three decades), errors of hosvd and tucker against TensorLy's tucker.

``--layouts`` prints instead CP-ALS's default GEMM layout (the fixed rule, ``layout="fixed"``) against the timed
choice (``layout="auto"``): the sweeps alone (20, started from a given CPTensor) at each size, in float32 and
float64, on 1 and 2 threads, the two run back to back in every repeat (in alternating order); the ratio is the
median of the paired ratios (wall-clock, and process CPU time, which a busy machine disturbs less), with the
1-minute load average (``/proc/loadavg``) before and after.
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
from tensorcompress.decompositions import cp_tuning, random_cp, random_tt, random_tucker  # noqa: E402
from tensorcompress.decompositions.cp_tuning import _FIRST, _LAST  # noqa: E402  (CP-ALS's four layouts)

Row = tuple[str, str, float, float]  # task, method, seconds, relative error


def rel_err(x: torch.Tensor, result) -> float:
    """``||X - X_hat|| / ||X||`` with ``X_hat`` reconstructed in float64 from the result's stored numbers: the error
    of the decomposition, not of a float32 reconstruction's BLAS."""
    return float(tc.relative_error(x.double(), result.to(torch.float64).to_tensor()))


def interleaved(methods: list[tuple[str, object]], repeats: int) -> dict[str, tuple[float, object]]:
    """Median time and last result of each ``(name, fn)``, the methods interleaved in every repeat."""
    times: dict[str, list[float]] = {name: [] for name, _ in methods}
    results = {}
    for _ in range(repeats):
        for name, fn in methods:
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), results[name]) for name, _ in methods}


def with_backend(backend: str, fn):
    tl.set_backend(backend)
    try:
        return fn()
    finally:
        tl.set_backend("pytorch")


def against_tensorly(task: str, x: torch.Tensor, ours, peer, kind, repeats: int) -> list[Row]:
    """Time ``ours(x)`` and ``peer(x)`` on TensorLy's numpy and pytorch back-ends (interleaved); ``kind`` is the
    tensorcompress class that reads the peer's result (``from_tensorly``), so that both errors are computed alike."""
    x_np = x.numpy()
    ours(x)  # untimed first call on this shape
    methods = [("tensorcompress", lambda: ours(x)),
               ("tensorly (numpy)", lambda: with_backend("numpy", lambda: peer(x_np))),
               ("tensorly (pytorch)", lambda: with_backend("pytorch", lambda: peer(x)))]
    measured = interleaved(methods, repeats)
    rows = []
    for name, (t, res) in measured.items():
        result = res if name == "tensorcompress" else kind.from_tensorly(res)
        rows.append((task, name, t, rel_err(x, result)))
    return rows


def floor_layouts(x: torch.Tensor, rank: int, sweeps: int) -> list[tuple[str, object]]:
    """The two MTTKRP-sized GEMMs of a sweep (last mode: ``X_(N) A``; first mode: ``X_(1)^T A``), four layouts each
    (the result rank-first or rank-last, the factor stored as ``A`` or as ``A^T``: CP-ALS chooses among the same
    four), each run ``sweeps`` times in a loop: a timing as long as the sweeps' own, so that on a shared machine both
    get the same share of a core (a lone millisecond GEMM often runs undisturbed and would flatter the floor)."""
    n = x.shape[0]
    a = torch.randn(n, rank, dtype=x.dtype)
    operands = {"last": (x.reshape(-1, n), a, a.mT.contiguous()), "first": (x.reshape(n, -1), a, a.mT.contiguous())}
    products = [(f"{kind}: layout {i}", lambda fn=fn, ops=operands[kind]: fn(*ops))
                for kind, layouts in (("last", _LAST), ("first", _FIRST)) for i, fn in enumerate(layouts)]
    return [(name, lambda fn=fn: [fn() for _ in range(sweeps)]) for name, fn in products]


def cp_rows(n: int, dtype: torch.dtype, repeats: int) -> tuple[list[Row], str]:
    rank, sweeps = 16, 20
    x = random_cp((n,) * 3, rank, noise=0.1, seed=0, dtype=dtype).tensor
    task = f"CP-ALS {n}^3, R={rank}, {sweeps} it"
    rows = against_tensorly(f"{task}, svd", x, lambda y: tc.cp_als(y, rank, n_iter_max=sweeps, tol=0, init="svd"),
                            lambda y: parafac(y, rank, n_iter_max=sweeps, tol=0, init="svd"), tc.CPTensor,
                            repeats)
    rows += against_tensorly(f"{task}, random", x,
                             lambda y: tc.cp_als(y, rank, n_iter_max=sweeps, tol=0, init="random", seed=0),
                             lambda y: parafac(y, rank, n_iter_max=sweeps, tol=0, init="random", random_state=0),
                             tc.CPTensor, repeats)
    # the sweeps alone (no initialisation timed: start from the result of one sweep, given as a CPTensor) and the
    # floor's GEMMs, interleaved so that both see the same load
    start = tc.cp_als(x, rank, n_iter_max=1, tol=0)
    layouts = floor_layouts(x, rank, sweeps)
    for _, fn in layouts:
        fn()
    t = {name: res[0] for name, res in interleaved(
        [("sweeps", lambda: tc.cp_als(x, rank, n_iter_max=sweeps, tol=0, init=start)), *layouts], repeats).items()}
    floor = (min(v for k, v in t.items() if k.startswith("last:"))
             + min(v for k, v in t.items() if k.startswith("first:")))
    note = (f"{task}: sweeps alone {t['sweeps']:.3f} s, floor (2 GEMMs/sweep, best layout) {floor:.3f} s, "
            f"sweeps / floor = {t['sweeps'] / floor:.2f}x; whole call (init='svd') / floor = "
            f"{rows[0][2] / floor:.2f}x")
    return rows, note


def hooi_rows(n: int, dtype: torch.dtype, repeats: int) -> list[Row]:
    rank, sweeps = 10, 10
    x = random_tucker((n,) * 3, rank, noise=0.1, seed=1, dtype=dtype).tensor
    return against_tensorly(f"Tucker HOOI {n}^3, R={rank}, {sweeps} it", x,
                            lambda y: tc.tucker(y, rank, n_iter_max=sweeps, tol=0),
                            lambda y: tl_tucker(y, [rank] * 3, n_iter_max=sweeps, tol=0, init="svd"),
                            tc.TuckerTensor, repeats)


def tt_rows(n: int, dtype: torch.dtype, repeats: int) -> list[Row]:
    x = random_tt((n,) * 5, 8, noise=0.05, seed=2, dtype=dtype).tensor
    return against_tensorly(f"TT-SVD {n}^5, rank 8", x, lambda y: tc.tt_svd(y, 8),
                            lambda y: tensor_train(y, [1, 8, 8, 8, 8, 1]), tc.TTTensor, repeats)


def graded_rows(dtype: torch.dtype, repeats: int) -> list[Row]:
    """Exact multilinear rank 16, 30^3, graded core: an ill-conditioned tensor (errors are the point)."""
    x = random_tucker((30, 30, 30), 16, decades=3.0, seed=3, dtype=dtype).tensor
    task = "graded 30^3, exact rank 16, 10 it"
    rows = against_tensorly(task, x, lambda y: tc.tucker(y, 16, n_iter_max=10, tol=0),
                            lambda y: tl_tucker(y, [16] * 3, n_iter_max=10, tol=0, init="svd"),
                            tc.TuckerTensor, repeats)
    t, res = interleaved([("hosvd", lambda: tc.hosvd(x, 16))], repeats)["hosvd"]
    rows.insert(1, (task, "tensorcompress hosvd", t, rel_err(x, res)))
    return rows


def load() -> float:
    """The 1-minute load average."""
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def sweeps_with_layouts(x: torch.Tensor, rank: int, sweeps: int, layouts) -> list[tuple[str, object]]:
    """``(layout, fn)`` pairs, ``fn`` running the sweeps alone (from the result of one sweep) in that layout."""
    start = tc.cp_als(x, rank, n_iter_max=1, tol=0)
    return [(layout, lambda layout=layout: tc.cp_als(x, rank, n_iter_max=sweeps, tol=0, init=start, layout=layout))
            for layout in layouts]


def paired(first, second, repeats: int) -> tuple[float, float, float, float]:
    """Median wall times of ``first()`` and ``second()``, and the medians of their paired ratios first / second in
    wall time and in process CPU time: the two run back to back in every repeat, in alternating order, so that each
    ratio compares two runs under nearly the same load."""
    wall: dict[int, list[float]] = {0: [], 1: []}
    ratios, cpu_ratios = [], []
    for r in range(repeats):
        w, c = [0.0, 0.0], [0.0, 0.0]
        for i in ((0, 1) if r % 2 == 0 else (1, 0)):
            start_w, start_c = time.perf_counter(), time.process_time()
            (first, second)[i]()
            w[i], c[i] = time.perf_counter() - start_w, time.process_time() - start_c
            wall[i].append(w[i])
        ratios.append(w[0] / w[1])
        cpu_ratios.append(c[0] / c[1])
    return (statistics.median(wall[0]), statistics.median(wall[1]), statistics.median(ratios),
            statistics.median(cpu_ratios))


def layout_rows(sizes: list[int], repeats: int) -> None:
    """CP-ALS's default layout (fixed rule) against the timed choice, the sweeps alone, paired runs."""
    rank, sweeps = 16, 20
    print(f"1-minute load before: {load():.2f}")
    print(f"| {'size':>5} | {'dtype':>7} | {'threads':>7} | {'fixed (s)':>9} | {'auto (s)':>9} | "
          f"{'fixed / auto':>12} | {'(CPU time)':>10} | {'fixed choice':>27} | {'auto choice':>27} |")
    print(f"|{'-' * 7}|{'-' * 9}|{'-' * 9}|{'-' * 11}|{'-' * 11}|{'-' * 14}|{'-' * 12}|{'-' * 29}|{'-' * 29}|")
    threads_before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for dtype in (torch.float32, torch.float64):
            for n in sizes:
                x = random_cp((n,) * 3, rank, noise=0.1, seed=0, dtype=dtype).tensor
                cp_tuning._TIMED.clear()  # time afresh, under the load of this row
                run = dict(sweeps_with_layouts(x, rank, sweeps, ("fixed", "auto")))
                for fn in run.values():  # untimed first calls (auto: the timing of the layouts)
                    fn()
                t_fixed, t_auto, ratio, cpu_ratio = paired(run["fixed"], run["auto"], repeats)
                names = {kind: cp_tuning.LAYOUTS[cp_tuning.fixed_layout(kind, m)] for kind, m in
                         (("first", x.reshape(n, -1)), ("last", x.reshape(-1, n)))}
                auto = {key[0]: cp_tuning.LAYOUTS[choice] for key, choice in cp_tuning._TIMED.items()}
                print(f"| {n:>5} | {str(dtype).removeprefix('torch.'):>7} | {threads:>7} | {t_fixed:9.3f} | "
                      f"{t_auto:9.3f} | {ratio:12.3f} | {cpu_ratio:10.3f} | "
                      f"{names['first'] + ', ' + names['last']:>27} | {auto['first'] + ', ' + auto['last']:>27} |",
                      flush=True)
    torch.set_num_threads(threads_before)
    print(f"1-minute load after: {load():.2f}  (ratios: medians of paired runs; choices: first-mode product, "
          f"last-mode product)")


def print_table(title: str, rows: list[Row]) -> None:
    print(f"\n{title}")
    print(f"| {'task':<34} | {'method':<20} | {'time (s)':>9} | {'rel. error':>10} | {'speed-up':>8} |")
    print(f"|{'-' * 36}|{'-' * 22}|{'-' * 11}|{'-' * 12}|{'-' * 10}|")
    by_task: dict[str, list] = {}
    for task, method, t, err in rows:
        by_task.setdefault(task, []).append((method, t, err))
    for task, items in by_task.items():
        best_peer = min(t for method, t, _ in items if method.startswith("tensorly"))
        for method, t, err in items:
            speed = f"{best_peer / t:7.2f}x" if method == "tensorcompress" else f"{'':>8}"
            print(f"| {task:<34} | {method:<20} | {t:9.3f} | {err:10.2e} | {speed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small tensors, one repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="cube sides for CP-ALS and HOOI")
    parser.add_argument("--layouts", action="store_true",
                        help="CP-ALS's fixed layout rule against the timed choice (1 and 2 threads) instead")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and NumPy's BLAS (default: the libraries' defaults)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (1 if args.quick else 3)
    sizes = args.sizes or ([40, 60] if args.quick else [100, 250])
    if args.layouts:
        layout_rows(sizes, args.repeats or (1 if args.quick else 5))
        return
    n_tt = 10 if args.quick else 20
    print(f"torch {torch.__version__}, tensorly {tl.__version__}, numpy {np.__version__}, "
          f"torch.get_num_threads() = {torch.get_num_threads()}, CPU, time.perf_counter median of {repeats}, "
          f"methods interleaved")
    tl.set_backend("pytorch")
    for dtype in (torch.float32, torch.float64):
        rows, notes = [], []
        for n in sizes:
            r, note = cp_rows(n, dtype, repeats)
            rows += r
            notes.append(note)
        for n in sizes:
            rows += hooi_rows(n, dtype, repeats)
        rows += tt_rows(n_tt, dtype, repeats)
        rows += graded_rows(dtype, repeats)
        name = str(dtype).removeprefix("torch.")
        print_table(f"{name} (speed-up = the faster TensorLy back-end's time / tensorcompress's time)", rows)
        for note in notes:
            print(note)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
