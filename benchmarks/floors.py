"""Benchmark: the library's own paths against their floors — the fastest way to compute the same numbers.

Run ``python benchmarks/floors.py`` (a few minutes on a quiet core; ``--quick`` for a smoke run, ``--only NAME`` for
one section). Every section times the library's path beside its floor (the same result by the plainest fast means:
a dense layer, PyTorch's own kernel, a float32 convolution) and, with ``--before DIR``, beside the library as it was
(a second copy of the package, imported under another name from ``DIR/tensorcompress``) — every comparator on the
same inputs, checked equal before timing. Protocol: one thread; the comparators interleaved in every repeat; each
repeat one ``torch.utils.benchmark.Timer.blocked_autorange`` median; the table gives the median of the repeats (at
least 7) and their interquartile range, and the ratio to the floor. The clock is the process's CPU time by default
(``--clock wall`` for wall time): on a machine shared by more runnable processes than cores, wall time mostly
measures waiting for a core. The 1-minute load average is printed before and after: on a shared machine the
absolute times move (caches and memory bandwidth are shared too), the ratios much less. A path within 1.5x of its
floor passes; otherwise the section says what is left and why.

Sections:

* ``shared`` — a k-means shared-weight LeNet-300-100 (pruned, shared, written and read back with
  ``tc.export.load_compressed``) at batch 1 and 64, against the dense network and against the dense network with an
  identity parametrization on the same layers (the cost of ``torch.nn.utils.parametrize`` itself).
* ``to_integer`` — the integer LeNet-5 of ``tc.quantization.to_integer`` at batch 256 (its products in float32 or
  float64 by the per-layer rule of :mod:`tensorcompress.quantization.integer`) against the float32 network and the
  fake-quantized one; the outputs of the before and after packages are bit-identical.
* ``kmeans`` — ``tc.quantization.kmeans_quantize`` of 10^6 weights (sorted once, boundaries by binary search)
  against Lloyd's iteration with float64 prefix sums on the sorted values (the floor, rounding the centroids
  differently); before and after are bit-identical.
* ``observers`` — a per-tensor ``MinMaxObserver`` against ``torch.aminmax`` alone, and an ``MSEObserver`` (100
  candidate ranges) against its 100 fake-quantization kernels alone, on 10^6 activations; the ranges chosen before
  and after are equal.
* ``quantize`` — ``fake_quantize`` (per tensor and per channel) against PyTorch's fake-quantization kernels, with
  which it is bit-exact, and ``quantize`` against ``torch.quantize_per_tensor`` (a peer: it rounds ties
  differently), on 10^6 activations.
* ``tt`` — ``TTLinear`` with its default ``order="auto"`` (the contraction order with the fewest FLOPs,
  ``tc.contraction_flops``, decided by counting, never by timing) against the dense layer and against each order
  forced (``"left"`` is the order it took before ``"auto"`` became the default): 1024 x 1024 at rank 4 and 784 x 300
  at rank 8, batch 64, inference mode; every order equal to the dense product to 1e-5 relative.
* ``channels_last`` — LeNet-5 and SmallCNN at batch 256 (forward, inference mode) and a training step (forward,
  backward, SGD) at batch 64, on images in NCHW memory order (as ``tc.fit`` and ``tc.evaluate`` pass them) and
  channels-last (``tc.train.channels_last_images``; not used by ``tc.fit``: see its docstring);
  logits equal to 1e-5 relative.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils import benchmark

import tensorcompress as tc

PASS = 1.5
"""A path passes within this factor of its floor."""


def load() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def import_before(directory: str | None):
    """The package found in ``directory/tensorcompress`` under the name ``tc_before``, or ``None``."""
    if directory is None:
        return None
    root = os.path.join(directory, "tensorcompress")
    spec = importlib.util.spec_from_file_location("tc_before", os.path.join(root, "__init__.py"),
                                                  submodule_search_locations=[root])
    module = importlib.util.module_from_spec(spec)
    sys.modules["tc_before"] = module
    spec.loader.exec_module(module)
    return module


CLOCKS = {"cpu": time.process_time, "wall": time.perf_counter}
"""``cpu``: the process's CPU time, which time-slicing on a loaded machine does not inflate; ``wall``: wall time."""


def interleaved(cases: dict[str, Callable[[], object]], repeats: int, min_run_time: float, clock: str = "cpu"
                ) -> dict[str, tuple[float, float]]:
    """``{name: (median, interquartile range)}`` in seconds, every case timed once per repeat, in turn."""
    timers = {name: benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=1, timer=CLOCKS[clock])
              for name, fn in cases.items()}
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, timer in timers.items():
            samples[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    out = {}
    for name, s in samples.items():
        q1, _, q3 = statistics.quantiles(s, n=4)
        out[name] = (statistics.median(s), q3 - q1)
    return out


def report(title: str, cases: dict[str, Callable[[], object]], floor: str, path: str, args, left: str) -> None:
    """Time ``cases`` and print the table; ``path`` (the library's path) is judged against ``floor``."""
    times = interleaved(cases, args.repeats, args.min_run_time, args.clock)
    base = times[floor][0]
    print(f"\n{title}")
    print(f"  {'comparator':58s} {'median ms':>10s} {'IQR ms':>9s} {'x floor':>8s}")
    for name, (med, iqr) in times.items():
        print(f"  {name:58s} {1e3 * med:10.4f} {1e3 * iqr:9.4f} {med / base:8.2f}")
    ratio = times[path][0] / base
    verdict = f"within {PASS}x of the floor" if ratio <= PASS else f"{ratio:.2f}x the floor: {left}"
    print(f"  -> {path}: {verdict}")


def _equal_all(results: dict[str, object]) -> None:
    """Every comparator computes the same numbers (bit for bit) before any is timed."""
    items = list(results.items())
    first_name, first = items[0]
    for name, value in items[1:]:
        a, b = (first, value) if isinstance(first, tuple) else ((first,), (value,))
        if not all(torch.equal(x, y) for x, y in zip(a, b, strict=True)):
            raise AssertionError(f"{name!r} differs from {first_name!r}: a floor must compute the same numbers")


def _identity_parametrized(model: nn.Module, names: list[str]) -> nn.Module:
    class Identity(nn.Module):
        def forward(self, w: torch.Tensor) -> torch.Tensor:
            return w

    out = copy.deepcopy(model)
    for name in names:
        parametrize.register_parametrization(out.get_submodule(name), "weight", Identity())
    return out


def shared_section(args, before) -> None:
    sparsity = {"fc1": 0.95, "fc2": 0.9, "fc3": 0.7}
    model = tc.models.pretrained("lenet300100")
    for layer, s in sparsity.items():
        model, _ = tc.pruning.prune(model, amount=s, include=[layer])
    shared, _ = tc.quantization.share_weights(model, bits=5, keep_zeros=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lenet300100.tcdc")
        tc.export.save_compressed(shared, path)
        loaded = tc.export.load_compressed(path).eval()
        old = before.export.load_compressed(path).eval() if before is not None else None
    dense = tc.models.pretrained("lenet300100").eval()  # the decoded weights as plain parameters
    with torch.no_grad():  # (removing a parametrization from a deep copy would strip the original's class too)
        for name in sparsity:
            dense.get_submodule(name).weight.copy_(loaded.get_submodule(name).weight)
            dense.get_submodule(name).bias.copy_(loaded.get_submodule(name).bias)
    identity = _identity_parametrized(dense, list(sparsity))
    for batch in (1, 64):
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        models = {"dense float32 (floor)": dense, "dense + identity parametrization": identity,
                  "shared weights, load_compressed": loaded}
        if old is not None:
            models["shared weights, load_compressed (before)"] = old
        with torch.inference_mode():
            _equal_all({name: m(x) for name, m in models.items()})
            cases = {name: (lambda m=m, x=x: m(x)) for name, m in models.items()}
            report(f"shared: LeNet-300-100 (pruned, 5-bit k-means codebooks) forward, batch {batch}, "
                   "inference mode", cases, "dense float32 (floor)", "shared weights, load_compressed", args,
                   "each weight access goes through torch.nn.utils.parametrize (see the identity row) and a "
                   "Python check that the codebook, codes and mask are unchanged; a few microseconds per layer "
                   "that only a batch large enough hides")


def to_integer_section(args, before) -> None:
    model = tc.models.pretrained("lenet5")
    train, test = tc.data.load_mnist_sample()
    x = test.tensors[0][:256]
    nets = {}
    for label, lib in (("to_integer", tc), ("to_integer (before)", before)):
        if lib is None:
            continue
        qm, _ = lib.quantization.quantize_model(model)
        lib.quantization.calibrate(qm, train, n_batches=4)
        nets[label] = lib.quantization.to_integer(qm, x[:2])[0]
        if label == "to_integer":
            fake = qm
    layers = [m for m in nets["to_integer"].modules() if isinstance(m, tc.quantization.IntegerLayer)]
    rule = ", ".join("float32" if m.float32_exact else "float64" for m in layers)
    cases = {"float32 LeNet-5 (floor)": lambda: model(x), "fake-quantized W8A8": lambda: fake(x)}
    cases |= {label: (lambda n=n: n(x)) for label, n in nets.items()}
    with torch.inference_mode():
        _equal_all({label: n(x) for label, n in nets.items()})
        report(f"to_integer: LeNet-5, batch 256 (products in {rule}, by layer)", cases, "float32 LeNet-5 (floor)",
               "to_integer", args, "the integer network also quantizes its input, requantizes every layer in int64 "
               "(multiply, rounding shift, clamp) and computes fc1 (fan-in 800 > 514) in float64; it is the "
               "readable reference of the arithmetic, the fast int8 path is the exported model")


def kmeans_prefix_sums(w: torch.Tensor, bits: int, n_iter_max: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The floor of 1-d k-means: Lloyd's iteration on the sorted values with float64 prefix sums, O(k log n) per
    iteration after one sort. The same iteration, but each centroid's sum is rounded differently (a difference of
    two float64 prefix sums instead of a float32 sum in the original order): not bit-identical."""
    codebook, _ = tc.quantization.kmeans_quantize(w, bits, n_iter_max=0)
    xs = w.reshape(-1).sort().values
    cs = torch.cat([torch.zeros(1, dtype=torch.float64), xs.double().cumsum(0)])
    ends = torch.tensor([0, xs.numel()])
    pos = torch.searchsorted(xs, (codebook[1:] + codebook[:-1]) / 2, right=True)
    for _ in range(n_iter_max):
        b = torch.cat([ends[:1], pos, ends[1:]])
        counts = torch.diff(b)
        means = ((cs[b[1:]] - cs[b[:-1]]) / counts.clamp_min(1)).to(w.dtype)
        codebook = torch.where(counts > 0, means, codebook).sort().values
        new = torch.searchsorted(xs, (codebook[1:] + codebook[:-1]) / 2, right=True)
        if torch.equal(new, pos):
            break
        pos = new
    return codebook, pos


def kmeans_section(args, before) -> None:
    w = torch.randn(10**6, generator=torch.Generator().manual_seed(0)) ** 3  # heavy tails, as trained weights
    bits = 5
    cases = {"sorted, float64 prefix sums (floor, not bit-identical)": lambda: kmeans_prefix_sums(w, bits),
             "kmeans_quantize": lambda: tc.quantization.kmeans_quantize(w, bits)}
    if before is not None:
        cases["kmeans_quantize (before)"] = lambda: before.quantization.kmeans_quantize(w, bits)
        _equal_all({name: cases[name]() for name in ("kmeans_quantize", "kmeans_quantize (before)")})
    codebook, idx = tc.quantization.kmeans_quantize(w, bits)
    floor_codebook, _ = kmeans_prefix_sums(w, bits)
    mse = float((codebook[idx.long()] - w).pow(2).mean())
    floor_idx = torch.bucketize(w, (floor_codebook[1:] + floor_codebook[:-1]) / 2)
    floor_mse = float((floor_codebook[floor_idx] - w).pow(2).mean())
    report(f"kmeans: 1-d k-means of 10^6 float32 weights (N(0,1)^3), {2**bits} centroids, up to 100 iterations; "
           f"MSE {mse:.6g}, floor's {floor_mse:.6g}", cases, "sorted, float64 prefix sums (floor, not bit-identical)",
           "kmeans_quantize", args, "bit-identity with the textbook iteration needs each centroid summed in float32 "
           "in the values' original order: one index_add_ over all n values per iteration (plus relabelling the "
           "values a boundary crossed), where prefix sums need O(k log n)")


def observers_section(args, before) -> None:
    x = torch.randn(256, 4, 32, 32, generator=torch.Generator().manual_seed(0)).relu_()  # 10^6 activations
    libs = {"": tc} | ({" (before)": before} if before is not None else {})
    minmax = {suffix: lib.quantization.MinMaxObserver() for suffix, lib in libs.items()}
    cases = {"torch.aminmax(x) (floor)": lambda: torch.aminmax(x)}
    cases |= {f"MinMaxObserver.update{s}": (lambda o=o: o.update(x)) for s, o in minmax.items()}
    report("observers: per-tensor MinMaxObserver.update on 10^6 activations", cases, "torch.aminmax(x) (floor)",
           "MinMaxObserver.update", args, "argument checks and the running minimum/maximum in small tensors")
    mse = {suffix: lib.quantization.MSEObserver(n_grid=100) for suffix, lib in libs.items()}
    if before is not None:
        mse[""].update(x)
        mse[" (before)"].update(x)
        _equal_all({"after": (mse[""].min_val, mse[""].max_val),
                    "before": (mse[" (before)"].min_val, mse[" (before)"].max_val)})
    rows = x.reshape(1, -1)
    lo, hi = torch.aminmax(rows, dim=1)

    def kernels_alone():  # the 100 candidates' fake-quantization kernels and nothing else
        for k in range(1, 101):
            qp = tc.quantization.qparams(k / 100 * lo, k / 100 * hi, axis=0)
            torch.fake_quantize_per_channel_affine(rows, qp.scale, qp.zero_point, 0, qp.qmin, qp.qmax)

    cases = {"100 fake-quantization kernels alone (floor)": kernels_alone}
    cases |= {f"MSEObserver.update{s}": (lambda o=o: o.update(x)) for s, o in mse.items()}
    report("observers: per-tensor MSEObserver.update (100 candidate ranges) on 10^6 activations", cases,
           "100 fake-quantization kernels alone (floor)", "MSEObserver.update", args,
           "each candidate's squared error (a subtraction into a buffer, a square, a mean) costs about as much as "
           "its fake-quantization kernel")


def quantize_section(args, before) -> None:
    x = torch.randn(256, 4, 32, 32, generator=torch.Generator().manual_seed(0))  # 10^6 activations
    libs = {"": tc} | ({" (before)": before} if before is not None else {})
    Q = tc.quantization
    per_tensor = Q.qparams(x.min(), x.max())
    per_channel = Q.qparams(x.amin(dim=(0, 2, 3)), x.amax(dim=(0, 2, 3)), axis=1)
    floors = {"per-tensor": lambda: torch.fake_quantize_per_tensor_affine(
                  x, per_tensor.scale, per_tensor.zero_point, per_tensor.qmin, per_tensor.qmax),
              "per-channel": lambda: torch.fake_quantize_per_channel_affine(
                  x, per_channel.scale, per_channel.zero_point, 1, per_channel.qmin, per_channel.qmax)}

    def own(lib, qp):  # each package checks for its own QParams class
        return lib.quantization.QParams(qp.scale, qp.zero_point, qp.qmin, qp.qmax, qp.axis)

    left = ("the library's arithmetic in separate elementwise passes (multiply, round, shift, clamp, shift back, "
            "scale) where the kernel makes one")
    with torch.inference_mode():
        for kind, qp in (("per-tensor", per_tensor), ("per-channel", per_channel)):
            cases = {f"torch.fake_quantize_{kind.replace('-', '_')}_affine (floor)": floors[kind]}
            own_qp = {s: own(lib, qp) for s, lib in libs.items()}
            cases |= {f"fake_quantize{s}": (lambda lib=lib, qp=own_qp[s]: lib.quantization.fake_quantize(x, qp))
                      for s, lib in libs.items()}
            _equal_all({name: fn() for name, fn in cases.items()})
            report(f"quantize: fake_quantize {kind}, 10^6 float32 activations, inference mode", cases,
                   next(iter(cases)), "fake_quantize", args, left)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # quantized tensors are deprecated: the peer row only
            scale, zp = float(per_tensor.scale), int(per_tensor.zero_point)
            cases = {"torch.quantize_per_tensor(...).int_repr() (peer, rounds ties after adding Z)":
                     lambda: torch.quantize_per_tensor(x, scale, zp, torch.quint8).int_repr()}
            own_qp = {s: own(lib, per_tensor) for s, lib in libs.items()}
            cases |= {f"quantize{s}": (lambda lib=lib, qp=own_qp[s]: lib.quantization.quantize(x, qp))
                      for s, lib in libs.items()}
            _equal_all({name: cases[name]() for name in cases if name.startswith("quantize")})
            report("quantize: quantize per-tensor to uint8 codes, 10^6 float32 activations", cases, next(iter(cases)),
                   "quantize", args, "PyTorch's quantize kernel (deprecated with its quantized tensors) makes the "
                   "codes in one vectorised pass but rounds x/S + Z, not Z + round(x/S) as its fake-quantization "
                   "kernels and the library do (they differ on ties when Z is odd); the library's codes take a "
                   "finiteness check, four elementwise passes and the narrowing cast")


def _close_all(results: dict[str, torch.Tensor], rtol: float = 1e-5) -> None:
    """Every comparator computes the same numbers up to floating-point rounding (relative to the largest)."""
    first_name, first = next(iter(results.items()))
    scale = first.abs().max().item()
    for name, value in results.items():
        if (value - first).abs().max().item() > rtol * scale:
            raise AssertionError(f"{name!r} differs from {first_name!r} by more than rounding")


def tt_section(args, before) -> None:
    from tensorcompress.layers.factorize import tt_modes

    for n_in, n_out, rank in ((1024, 1024, 4), (784, 300, 8)):
        torch.manual_seed(0)
        layer = tc.TTLinear(tt_modes(n_in), tt_modes(n_out), rank).eval()  # the default order, "auto"
        dense = layer.to_dense().eval()
        x = torch.randn(64, n_in)
        cores = list(layer.cores)
        flops = tc.contraction_flops(layer.out_modes, layer.in_modes, layer.rank, 64)
        chosen = tc.contraction_order(layer.out_modes, layer.in_modes, layer.rank, 64)
        path = f"TTLinear order='auto' (chose {chosen})"
        cases = {"dense nn.Linear (floor)": lambda d=dense, x=x: d(x), path: lambda m=layer, x=x: m(x)}
        cases |= {f"order {o} ({flops[o] / 1e6:.1f} MFLOP)" + (", the former default" if o == "left" else ""):
                  (lambda o=o, c=cores, x=x, b=layer.bias: tc.tt_matrix_contract(c, x, o) + b) for o in flops}
        if before is not None:
            old = before.TTLinear(layer.in_modes, layer.out_modes, rank).eval()
            old.load_state_dict(layer.state_dict())
            cases["TTLinear (before)"] = lambda m=old, x=x: m(x)
        with torch.inference_mode():
            _close_all({name: fn() for name, fn in cases.items()})
            report(f"tt: TTLinear {n_in} -> {n_out}, modes {layer.in_modes} -> {layer.out_modes}, rank {rank}, "
                   "batch 64, inference mode", cases, "dense nn.Linear (floor)", path,
                   args, "the orders are ranked by FLOPs, not by time: each core step is an einsum that permutes "
                   "its operand and its result (two copies of the intermediate around a GEMM with an inner size "
                   "of r_{k-1} n_k), so a TT layer with 4-5x fewer FLOPs than the dense layer runs near its speed")


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def channels_last_section(args, before) -> None:
    for make in (tc.models.LeNet5, tc.models.SmallCNN):
        torch.manual_seed(0)
        model = make().eval()
        name = type(model).__name__
        x = torch.randn(256, 1, 28, 28)
        x_cl = tc.train.channels_last_images(x)
        cases = {"channels-last images": lambda m=model, x=x_cl: m(x),
                 "NCHW images (before; tc.evaluate)": lambda m=model, x=x: m(x)}
        with torch.inference_mode():
            _close_all({label: fn() for label, fn in cases.items()})
            report(f"channels_last: {name} forward, batch 256, inference mode", cases, "channels-last images",
                   "channels-last images", args, "")
        y = torch.randint(0, 10, (64,))
        cases = {"channels-last images (tc.fit)": _train_step(copy.deepcopy(model).train(), x_cl[:64], y),
                 "NCHW images (before)": _train_step(copy.deepcopy(model).train(), x[:64], y)}
        report(f"channels_last: {name} training step (forward, backward, SGD), batch 64", cases,
               "channels-last images (tc.fit)", "channels-last images (tc.fit)", args, "")


SECTIONS = {"shared": shared_section, "to_integer": to_integer_section, "kmeans": kmeans_section,
            "observers": observers_section, "quantize": quantize_section, "tt": tt_section,
            "channels_last": channels_last_section}


def timing_parser(doc: str) -> argparse.ArgumentParser:
    """The options every speed benchmark shares: ``--quick`` and ``--clock``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 short repeats (a smoke run, not a measurement)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu",
                        help="process CPU time (default: robust to a shared machine's load) or wall time")
    return parser


def timing_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parsed options with ``repeats`` and ``min_run_time`` set from ``--quick``; one thread from here on."""
    args = parser.parse_args()
    args.repeats, args.min_run_time = (3, 0.01) if args.quick else (7, 0.2)
    torch.set_num_threads(1)
    return args


def main() -> None:
    parser = timing_parser(__doc__)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    parser.add_argument("--before", metavar="DIR", help="also time the package in DIR/tensorcompress")
    args = timing_args(parser)
    before = import_before(args.before)
    start = load()
    print(f"torch {torch.__version__}, 1 thread, {args.repeats} repeats, {args.clock} time, 1-minute load average "
          f"before: {start:.2f}")
    for name in args.only or SECTIONS:
        SECTIONS[name](args, before)
    print(f"\n1-minute load average: {start:.2f} before, {load():.2f} after")


if __name__ == "__main__":
    main()
