"""Honest measurements of a network: parameters, bytes on disk, FLOPs, latency.

What each number is, and what it is not:

* :func:`count_parameters` — entries of the parameter tensors; ``nonzero=True`` counts the non-zero entries of
  the *effective* weights (a ``torch.nn.utils.prune`` mask applied). A masked or pruned weight is **not** a
  smaller model: the dense tensor (and the mask) are still stored and multiplied.
* :func:`model_size_bytes` — exactly the bytes ``torch.save(model.state_dict())`` writes: dtype, buffers, masks
  and pickling overhead included. Parameter count × 4 is only an estimate of it.
* :func:`flops` — the multiply-adds of the matrix products and convolutions of one forward pass, times 2 (FLOPs =
  2 × MACs), as :class:`torch.utils.flop_counter.FlopCounterMode` counts them: the work the dense kernels *do*,
  zeros included. Bias additions, activations, pooling, normalisation (BatchNorm) and other element-wise work are
  **not** counted, so folding a BatchNorm into the preceding convolution leaves this number unchanged.
* :func:`latency` — wall-clock time of a forward pass measured by :mod:`torch.utils.benchmark` (median and
  inter-quartile range). FLOPs are not latency: memory traffic, kernel launch overhead, layer shapes and threads
  decide the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import surgery
from .._validation import check_positive_int, check_tensor

__all__ = [
    "count_parameters",
    "model_size_bytes",
    "flops",
    "latency",
    "Latency",
]


def _check_module(model: object, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _effective_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The tensors the forward pass uses: ``weight`` (mask applied) for pruned ``weight_orig``, parametrised values."""
    out: list[torch.Tensor] = []
    for module in model.modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue  # handled through the parent's property
        if parametrize.is_parametrized(module):
            for pname in module.parametrizations:
                out.append(getattr(module, pname))
        for pname, p in module._parameters.items():
            if p is None:
                continue
            if pname.endswith("_orig") and isinstance(getattr(module, pname[: -len("_orig")], None), torch.Tensor):
                out.append(getattr(module, pname[: -len("_orig")]))  # torch.nn.utils.prune: weight = weight_orig * mask
            else:
                out.append(p)
    return out


def count_parameters(model: nn.Module, nonzero: bool = False) -> int:
    """Number of parameter entries of ``model`` (shared parameters counted once).

    Parameters
    ----------
    model : nn.Module
    nonzero : bool
        Count only non-zero entries of the effective weights: for a module pruned with ``torch.nn.utils.prune`` the
        masked ``weight`` replaces ``weight_orig``; for a ``torch.nn.utils.parametrize`` parametrisation the
        computed tensor replaces the original. This measures sparsity, not size: see :func:`model_size_bytes`.

    Examples
    --------
    ``nn.Linear(10, 5)`` has :math:`10\\cdot5 + 5 = 55` parameters.
    """
    _check_module(model)
    if not nonzero:
        return sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        return sum(int(torch.count_nonzero(t)) for t in _effective_tensors(model))


def model_size_bytes(model: nn.Module) -> int:
    """Bytes written by ``torch.save(model.state_dict())`` into an in-memory buffer.

    A file holds the same bytes up to the zip records' folder name, which ``torch.save`` takes from the file's stem
    (``archive`` for a buffer), so a file named ``archive.pt`` has exactly this size and others differ by a few
    dozen bytes of names and alignment padding.

    Counts parameters *and* buffers (BatchNorm statistics, pruning masks) at their stored dtype, plus the zip/pickle
    container. A pruned model whose zeros are stored densely is not smaller; only a different storage format is.
    """
    return surgery.state_bytes(_check_module(model))


def flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Floating point operations of one forward pass of ``model`` on ``example_input``: the multiply-adds (MACs) of its
    matrix products and convolutions, times 2.

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which has formulas for ``mm``, ``addmm``, ``bmm``,
    ``baddbmm`` (so ``nn.Linear``, ``matmul`` and ``einsum``, which lower to them), convolutions (grouped,
    depthwise and transposed included) and scaled-dot-product attention, each as :math:`2 \\times` its MACs (the
    exact count of a length-:math:`k` dot product, :math:`2k - 1`, is rounded up to :math:`2k`). Everything else
    counts 0: the bias addition of ``addmm`` and of a convolution, activations (ReLU, ...), pooling, normalisation
    (BatchNorm, LayerNorm), softmax outside attention, element-wise arithmetic. A padded convolution counts the full
    kernel at every output position, zeros included, and a masked weight costs as much as a dense one.

    The count is for the whole batch in ``example_input``: divide by the batch size for FLOPs per sample.
    ``nn.Linear(10, 5)`` on a batch of one costs :math:`2\\cdot10\\cdot5 = 100` FLOPs (its 5 bias additions are not
    counted). Runs in eval mode under ``torch.no_grad`` and restores the model's mode.
    """
    _check_module(model)
    check_tensor(example_input, "example_input")
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with surgery.kept_modes(model, False), torch.no_grad(), counter:
        model(example_input)
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class Latency:
    """Forward-pass time in seconds: ``median`` and inter-quartile range ``iqr`` over ``runs`` timed blocks."""

    median: float
    iqr: float
    runs: int
    device: str
    threads: int

    def __str__(self) -> str:
        # the spread is an inter-quartile range, not a standard deviation: printed as such, never as "±"
        return f"{self.median * 1e3:.3f} ms (IQR {self.iqr * 1e3:.3f} ms, {self.runs} runs, {self.device})"


def latency(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    threads: int = 1,
    min_run_time: float = 0.2,
) -> Latency:
    """Median wall-clock time of ``model(example_input)`` under ``torch.inference_mode`` on ``device``.

    Measured with :meth:`torch.utils.benchmark.Timer.blocked_autorange` (which synchronises CUDA), on a deep copy
    of the model in eval mode (``model`` itself is not moved or changed), with ``threads`` CPU threads.
    Machine-dependent: print it in notebooks only in cells marked ``# NBVAL_IGNORE_OUTPUT``.

    Parameters
    ----------
    model : nn.Module
        The model timed (a copy of it is).
    example_input : torch.Tensor
        One batch; its batch size is part of what is measured.
    device : torch.device or str
        Where the copy and the input are moved for the measurement.
    threads : int >= 1
        CPU threads the timer runs with.
    min_run_time : float
        Seconds of measurement at least (passed to ``blocked_autorange``); longer gives a steadier median.

    Returns
    -------
    Latency
        Median and interquartile range in seconds per call, the number of timed blocks, the device and threads.
    """
    _check_module(model)
    check_tensor(example_input, "example_input")
    check_positive_int(threads, "threads")
    from torch.utils import benchmark

    device = torch.device(device)
    m = surgery.copy_model(model).to(device).eval()  # a pruned model too: deepcopy refuses it after a forward
    x = example_input.to(device)

    def forward() -> None:
        with torch.inference_mode():
            m(x)

    forward()  # warm-up
    timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)
    meas = timer.blocked_autorange(min_run_time=min_run_time)
    return Latency(median=float(meas.median), iqr=float(meas.iqr), runs=len(meas.times), device=str(device),
                   threads=threads)
