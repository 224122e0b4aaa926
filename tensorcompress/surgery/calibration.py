r"""What the data-driven compression methods (GPTQ, AWQ, SmoothQuant, Wanda, SparseGPT) read from calibration
data and share, written once.

* :func:`calibration_batches` — the model inputs of ``calibration`` as a list (read once, so that one-shot
  iterables can be passed over several times);
* :func:`input_statistics` — per layer, from one pass: the token count :math:`N`, :math:`X^\top X`, the
  mean and the maximum of :math:`|X_j|` per input channel, inputs flattened over every leading dimension (batch and
  position of a transformer's tokens). The layer-wise Hessian of GPTQ is :math:`H = 2X^\top X/N`;
* :func:`input_groups` — the selected ``nn.Linear`` layers grouped by the tensor they read, in call order, on the
  traced graph (:func:`tensorcompress.surgery.trace`), with the node that produced that tensor;
* :func:`layerwise_statistics` — the chosen layers one at a time in the order of the forward pass, each with the
  statistics of its inputs as the model is *when the layer is reached* (what the caller changed in earlier layers
  shapes them: GPTQ's and SparseGPT's sequential mode);
* :func:`check_damp`, :func:`check_hessian`, :func:`inverse_factor` — the dampened inverse Hessian of Optimal Brain
  Surgeon's column-by-column methods (GPTQ, SparseGPT) through its upper Cholesky factor :math:`U`
  (:math:`H^{-1} = U^\top U`);
* :func:`layer_error` — the relative weight error :math:`\|\Delta\|_F/\|W\|_F` or output error
  :math:`\|\Delta X\|_F/\|WX\|_F` of a changed weight.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from .._validation import check_finite, check_real, check_tensor
from .core import Selected
from .graph import Node, trace
from .model import device_of, input_batches, run_over

__all__ = ["calibration_batches", "InputStats", "input_statistics", "InputGroup", "input_groups",
           "layerwise_statistics", "check_damp", "check_hessian", "inverse_factor", "layer_error"]


def calibration_batches(calibration: object) -> list:
    """The model inputs of ``calibration`` (one tensor, a ``Dataset`` or an iterable of ``x`` or ``(x, y, ...)``
    batches), as a list; ``ValueError`` when it gives none."""
    if calibration is None:
        raise TypeError("calibration must be a tensor, a Dataset or an iterable of batches, got None")
    batches = list(input_batches(calibration))
    if not batches or all(isinstance(b, torch.Tensor) and b.numel() == 0 for b in batches):
        raise ValueError("calibration is empty: it gave no batch of inputs")
    return batches


@dataclass
class InputStats:
    """Statistics of the inputs one layer received: ``count`` tokens, ``xtx`` :math:`= X^\\top X` and the
    per-channel ``abs_sum`` and ``abs_max`` of :math:`|X|` (float32, or float64 for float64 inputs)."""

    count: int
    xtx: torch.Tensor
    abs_sum: torch.Tensor
    abs_max: torch.Tensor

    def hessian(self, dtype: torch.dtype) -> torch.Tensor:
        """:math:`H = 2 X^\\top X / N` in ``dtype``."""
        return (2 * self.xtx / self.count).to(dtype)

    @property
    def abs_mean(self) -> torch.Tensor:
        """Mean :math:`|X_j|` per input channel."""
        return self.abs_sum / self.count


class _Enough(Exception):
    """Raised by a hook to end a forward pass once the layers of interest have seen their input."""


def input_statistics(model: nn.Module, batches: list, modules: dict[str, nn.Module], *,
                     stop_early: bool = False) -> dict[str, InputStats]:
    """One pass of ``model`` over ``batches`` (:func:`tensorcompress.run_over`) recording
    :class:`InputStats` of the first positional input of each of ``modules`` (name -> module).

    Statistics accumulate in float64 for a float64 input, else in float32 (as the GPTQ reference code accumulates
    its Hessian). With ``stop_early`` (only for modules called once per forward pass) each forward pass ends as soon
    as every module has been called: what comes after them cannot change their inputs.
    """
    stats: dict[str, InputStats] = {}
    seen: set[str] = set()

    def record(name: str, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        x = x.double() if x.dtype == torch.float64 else x.float()
        a = x.abs()
        s = stats.get(name)
        if s is None:
            stats[name] = InputStats(x.shape[0], x.T @ x, a.sum(0), a.amax(0))
        else:
            s.count += x.shape[0]
            s.xtx += x.T @ x
            s.abs_sum += a.sum(0)
            s.abs_max = torch.maximum(s.abs_max, a.amax(0))
        seen.add(name)
        if stop_early and len(seen) == len(modules):
            raise _Enough

    handles = [m.register_forward_pre_hook(lambda _m, args, n=n: record(n, args[0])) for n, m in modules.items()]
    try:
        for batch in batches:
            seen.clear()
            try:
                run_over(model, [batch])
            except _Enough:
                pass
    finally:
        for h in handles:
            h.remove()
    silent = [n for n in modules if n not in stats or stats[n].count == 0]
    if silent:
        raise ValueError(f"layers {silent} received no input from the calibration data (never called, or empty "
                         f"batches)")
    return stats


@dataclass
class InputGroup:
    """Selected ``nn.Linear`` layers that read one tensor (``layers``, in call order), the traced ``producer`` node
    of that tensor, whether the tensor goes to these layers only, each called once (``exclusive``: scaling the
    producer's output channels then changes nothing else), and whether each of them is called once per forward
    pass (``once``)."""

    layers: list[Selected]
    producer: Node
    exclusive: bool
    once: bool

    @property
    def producer_module(self) -> nn.Module | None:
        """The producing leaf module, when the tensor comes from one called once (``None`` for a function or the
        model's input)."""
        t = self.producer.target
        return t if isinstance(t, nn.Module) and self.producer.module_name is not None else None


def input_groups(model: nn.Module, example: object, chosen: list[Selected]) -> list[InputGroup]:
    """The ``chosen`` layers of ``model`` grouped by the tensor they read, in the order of their first call on
    ``example``; ``ValueError`` for a layer the forward pass never calls."""
    graph = trace(model, example)
    by_source: dict[tuple[int, ...], list[tuple[int, Selected]]] = {}
    for sel in chosen:
        calls = graph.calls(sel.module)
        if not calls:
            raise ValueError(f"layer {sel.name!r} is never called in the model's forward pass")
        by_source.setdefault(tuple(graph.nodes[calls[0]].inputs), []).append((calls[0], sel))
    groups = []
    for source, members in sorted(by_source.items(), key=lambda kv: kv[1][0][0]):
        nodes = {i for i, _ in members}
        once = all(len(graph.calls(sel.module)) == 1 for _, sel in members)
        producer = graph.nodes[source[0]] if len(source) == 1 else graph.nodes[0]
        exclusive = len(source) == 1 and once and set(producer.consumers) == nodes
        if isinstance(producer.target, nn.Module) and len(graph.calls(producer.target)) != 1:
            exclusive = False
        groups.append(InputGroup([sel for _, sel in members], producer, exclusive, once))
    return groups



def layerwise_statistics(model: nn.Module, batches: list, chosen: list[Selected]
                         ) -> Iterator[tuple[Selected, InputStats]]:
    """Each of the ``chosen`` layers with the :class:`InputStats` of its inputs on ``batches``, in the order of the
    forward pass (:func:`input_groups` on the first batch). The layers reading one tensor share one pass, taken when
    the first of them is reached: what the caller changes in ``model`` between two items (an earlier layer
    quantized or pruned) shapes the inputs of the later groups."""
    for group in input_groups(model, batches[0].to(device_of(model)), chosen):
        first = group.layers[0]
        stats = input_statistics(model, batches, {first.name: first.module}, stop_early=group.once)[first.name]
        for sel in group.layers:
            yield sel, stats

def check_damp(damp: object) -> float:
    """``damp`` as a float in [0, 1]."""
    d = check_real(damp, "damp")
    if not 0 <= d <= 1:
        raise ValueError(f"damp must be in [0, 1] (a fraction of the mean diagonal of H; 0.01 in the paper), got "
                         f"{damp!r}")
    return d


def check_hessian(hessian: object, n: int) -> None:
    """``hessian`` a finite floating ``(n, n)`` tensor, for a weight with ``n`` inputs."""
    check_tensor(hessian, "hessian", floating=True)
    if tuple(hessian.shape) != (n, n):
        raise ValueError(f"hessian must be ({n}, {n}) for a weight with {n} inputs, got shape "
                         f"{tuple(hessian.shape)}")
    check_finite(hessian, "hessian")


def inverse_factor(h: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor :math:`U` of :math:`H^{-1}` (:math:`H^{-1} = U^\\top U`); ``ValueError`` when the
    (dampened) ``h`` is not positive definite."""
    try:
        lower = torch.linalg.cholesky(h)
    except torch.linalg.LinAlgError as err:
        raise ValueError(f"the dampened Hessian is not positive definite ({err}); increase damp") from err
    return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)


def layer_error(delta: torch.Tensor, weight: torch.Tensor, hessian: torch.Tensor | None = None) -> float:
    r""":math:`\|\Delta\|_F / \|W\|_F`, or with the inputs' second moment :math:`H \propto X^\top X` the output error
    :math:`\|\Delta X\|_F / \|W X\|_F = \sqrt{\operatorname{tr}(\Delta H \Delta^\top) /
    \operatorname{tr}(W H W^\top)}`, computed in float64."""
    d, w = delta.detach().double(), weight.detach().double()
    if hessian is None:
        num, den = d.square().sum(), w.square().sum()
    else:
        h = hessian.detach().double()
        num, den = ((d @ h) * d).sum(), ((w @ h) * w).sum()
    return math.sqrt(float(num.clamp(min=0)) / float(den)) if float(den) > 0 else float(num > 0)
