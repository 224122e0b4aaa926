r"""Automatic compression: one technique per layer, chosen under one budget in real bytes, FLOPs or latency.

**The problem.** Layer :math:`i` of a network has a small set of options :math:`j` — keep it, factorise it at an
energy level, prune a fraction of it, quantize its weights to :math:`b` bits, share its weights among :math:`2^b`
values, or (``"weight_only"``, asked for by name) store a Linear layer's weights as packed :math:`b`-bit
round-to-nearest codes with a grid per group of inputs, as a language model's layers are stored — each with a
cost :math:`c_{ij}` and a loss :math:`\ell_{ij}`. Choose one option :math:`j_i` per layer:

.. math:: \min_{j_1, \dots, j_n} \sum_i \ell_{i j_i} \quad\text{subject to}\quad \sum_i c_{i j_i} \le B.

This is the **multiple-choice knapsack** (Sinha & Zoltners 1979, "The multiple-choice knapsack problem",
Operations Research 27). It is NP-hard, but with integer costs it is solved exactly by dynamic programming over the
costs: with :math:`F_i(c)` the least loss of layers :math:`1..i` at total cost exactly :math:`c`,

.. math:: F_0(0) = 0,\quad F_0(c > 0) = \infty,\qquad F_i(c) = \min_j \bigl(F_{i-1}(c - c_{ij}) + \ell_{ij}\bigr),

and the answer is :math:`\min_{c \le B} F_n(c)`, read back through the option that reached each cell
(:func:`allocate`). Time :math:`O(B' \sum_i m_i)` and memory :math:`O(n B')` for :math:`n` layers of :math:`m_i`
options, where :math:`B' = (B - \sum_i \min_j c_{ij}) / g` after two exact reductions: every layer's cheapest
option is paid up front, and costs are divided by their greatest common divisor :math:`g`. Greedy selection by loss
per unit of cost is not exact (a step that is cheap per byte can spend the budget an efficient larger step needed);
a Lagrangian relaxation, :math:`\min_j \ell_{ij} + \lambda c_{ij}` per layer for a multiplier :math:`\lambda \ge 0`,
reaches only the points on the lower convex hull of the (cost, loss) trade-off.

**Costs** (:func:`auto_compress`, ``cost=``) are measured with each option applied alone to the model:

* ``"bytes"`` — the bytes the compressed-model file (:func:`tensorcompress.export.encode_compressed`) stores for
  the layer's tensors: each entry's header record plus its payload (raw bytes, coded streams and their tables).
  The file is the sum of these and a constant part (magic, the architecture record, the tensors of unselected
  layers, checksum), so the budget is the file's size; a file whose architecture record drops (a factorised or
  quantized layer renames its tensors) is smaller still by that record;
* ``"flops"`` — the change of :func:`tensorcompress.flops` on one input (exactly additive over layers);
* ``"latency"`` — the change of :func:`tensorcompress.latency`'s median on one input, in microseconds (measured,
  so only approximately additive).

**Losses** are a sensitivity scan: each option applied alone, without fine-tuning, is measured on the validation
data, by default as the mean KL divergence of its outputs from the original model's,
:math:`\frac1N\sum_x \mathrm{KL}(p(x) \,\|\, \hat p(x))` (the loss distillation then minimises; never negative), or
as the increase of the validation cross-entropy; for a language model's ``(B, T, V)`` logits of ``(B, T)`` token
windows, one sample is one token. On a few hundred validation images a well-trained network's
cross-entropy moves by a few hundredths either way under a mild change, and an option that happens to lower it gets
a negative loss that the allocation spends the budget on; the divergence from the original has no such sign. The
options' sum predicts the combination's loss when the layers' errors do not interact; :class:`AutoReport` gives
the prediction beside the measurement. HAWQ (Dong et al. 2019, "HAWQ: Hessian aware quantization of neural
networks with mixed-precision", ICCV) ranks layers by a second-order estimate instead.

**Then** the chosen options are applied together and the model is fine-tuned by distillation from the original
(:func:`tensorcompress.distillation.distill`). A quantized layer's weight is frozen while fine-tuning, so that its
entropy-coded codes — and so the file — keep the size that was allocated; a pruned layer keeps its mask, a shared one
its indices (its codebook trains), and factorised and kept layers train freely, all at constant bytes.

Related searches choose within one family: HAQ (Wang et al. 2019, CVPR) and HAWQ allocate bits per layer, AMC (He
et al. 2018, ECCV) ranks or channels; this one chooses across families.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from .. import surgery
from .._validation import check_fraction, check_positive_int, check_real
from ..distillation import distill
from ..export import encode_compressed
from ..layers import factorize
from ..metrics import Leaderboard
from ..metrics.measure import flops as count_flops
from ..metrics.measure import latency as time_forward
from ..pruning import prune
from ..quantization import WeightQuantizer, quantize_model, quantize_weights, share_weights
from ..train import evaluate

__all__ = ["allocate", "auto_compress", "AutoReport", "LayerOption", "AutoLayer", "file_layer_bytes", "METHODS",
           "DEFAULT_METHODS", "DEFAULT_GRID"]

METHODS = ("factorize", "prune", "quantize", "share", "weight_only")
"""The techniques :func:`auto_compress` can choose among (one per layer, or none: ``"keep"``)."""

DEFAULT_METHODS = METHODS[:4]
"""Those it chooses among unless told: ``"weight_only"`` (a language model's layers) is asked for by name."""

DEFAULT_GRID: dict[str, tuple] = {
    "factorize": (0.5, 0.7, 0.9, 0.97),  # singular-value energy kept (SVD for Linear, Tucker-2 for Conv2d)
    "prune": (0.5, 0.7, 0.8, 0.9, 0.95),  # fraction of the weights removed (magnitude, per layer)
    "quantize": (2, 3, 4, 6, 8),  # weight bits, per output channel, weights only
    "share": (2, 3, 4, 5),  # k-means codebook bits (2**bits shared values)
    "weight_only": (2, 3, 4, 8),  # RTN weight bits per group of inputs (WeightOnlyLinear; Linear layers only)
}
"""Each method's settings tried on every selected layer."""

COSTS = ("bytes", "flops", "latency")
SENSITIVITIES = ("kl", "cross_entropy")
_HEADER = struct.Struct("<4sBBI")  # the file's prefix: magic, version, coder, header length (export.file)


# ---------------------------------------------------------------------------------------------------------------
# the multiple-choice knapsack
# ---------------------------------------------------------------------------------------------------------------

def _check_cost(value: object, label: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{label} must be an int, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{label} must be an int (costs are counted in whole units), got "
                        f"{type(value).__name__} {value!r}") from None
    if v < 0:
        raise ValueError(f"{label} must be >= 0, got {v}")
    return v


def _check_options(options: object) -> list[list[tuple[int, float]]]:
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence):
        raise TypeError(f"options must be a sequence (one entry per layer) of sequences of (cost, loss) pairs, got "
                        f"{type(options).__name__}")
    if not options:
        raise ValueError("options is empty: give at least one layer's (cost, loss) pairs")
    out = []
    for i, layer in enumerate(options):
        if isinstance(layer, (str, bytes)) or not isinstance(layer, Sequence):
            raise TypeError(f"options[{i}] must be a sequence of (cost, loss) pairs, got {type(layer).__name__}")
        if not layer:
            raise ValueError(f"options[{i}] is empty: every layer needs at least one choice")
        pairs = []
        for j, pair in enumerate(layer):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise TypeError(f"options[{i}][{j}] must be a (cost, loss) pair, got {pair!r}")
            cost = _check_cost(pair[0], f"options[{i}][{j}] cost")
            loss = check_real(pair[1], f"options[{i}][{j}] loss")
            if not math.isfinite(loss):
                raise ValueError(f"options[{i}][{j}] loss must be finite, got {loss}")
            pairs.append((cost, loss))
        out.append(pairs)
    return out


def _index_dtype(most: int) -> np.dtype:
    return next(np.dtype(t) for t in (np.int8, np.int16, np.int32) if most < np.iinfo(t).max)


def allocate(options: Sequence[Sequence[tuple[int, float]]], budget: int) -> list[int]:
    r"""The exact multiple-choice knapsack: one choice per layer, least total loss with total cost within budget.

    Dynamic programming over integer costs (module docstring): time :math:`O(B' \sum_i m_i)`, memory
    :math:`O(n B')`, with :math:`B' = (B - \sum_i \min_j c_{ij}) / g`, :math:`g` the costs' greatest common divisor
    (after each layer's cheapest cost is subtracted).

    Parameters
    ----------
    options : sequence of sequences of (int, float)
        ``options[i]`` lists the ``(cost, loss)`` pairs of layer ``i``. Costs are ints ``>= 0`` (bytes, FLOPs,
        microseconds); losses are finite reals (negative allowed).
    budget : int >= 0
        The most the chosen costs may sum to.

    Returns
    -------
    list of int
        ``choice[i]``, the index into ``options[i]``. Among choices of equal least loss (the sums taken layer by
        layer, in order), a cheapest one.

    Raises
    ------
    TypeError
        A cost or the budget that is not an int, a malformed pair.
    ValueError
        Empty options or an empty layer, a negative cost or budget, a non-finite loss, or no choice that fits: the
        cheapest combination costs more than ``budget`` (the message gives it).
    """
    opts = _check_options(options)
    budget = _check_cost(budget, "budget")
    floors = [min(c for c, _ in layer) for layer in opts]
    cheapest = sum(floors)
    if cheapest > budget:
        raise ValueError(f"no choice fits: the cheapest combination costs {cheapest}, more than budget={budget}")
    steps = [[c - f for c, _ in layer] for layer, f in zip(opts, floors, strict=True)]
    g = math.gcd(*(s for layer in steps for s in layer)) or 1
    cap = min((budget - cheapest) // g, sum(max(layer) for layer in steps) // g)
    best = np.full(cap + 1, np.inf)  # best[c]: least loss of the layers so far at extra cost exactly c * g
    best[0] = 0.0
    picks = np.empty((len(opts), cap + 1), dtype=_index_dtype(max(len(layer) for layer in opts)))
    for i, layer in enumerate(opts):
        new, pick = np.full(cap + 1, np.inf), np.full(cap + 1, -1, dtype=picks.dtype)
        for j, ((_, loss), step) in enumerate(zip(layer, steps[i], strict=True)):
            s = step // g
            if s > cap:
                continue
            reach = np.full(cap + 1, np.inf)
            reach[s:] = best[: cap + 1 - s] + loss
            better = reach < new  # strict: the earliest option keeps a tie
            new[better], pick[better] = reach[better], j
        best, picks[i] = new, pick
    c = int(np.argmin(best))  # the least loss; argmin takes the first, so the cheapest of equal losses
    choice = []
    for i in range(len(opts) - 1, -1, -1):
        j = int(picks[i, c])
        choice.append(j)
        c -= steps[i][j] // g
    return choice[::-1]


# ---------------------------------------------------------------------------------------------------------------
# options: one technique on one layer
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerOption:
    """One option of one layer: ``method`` (``"keep"`` or one of :data:`METHODS`) with its ``setting`` (energy,
    fraction removed, weight bits, codebook bits; ``None`` for keep), ``cost`` (the change of the model's cost when
    applied alone, in the cost's unit: bytes, FLOPs or microseconds), ``loss`` (its sensitivity when applied alone,
    nats: :func:`auto_compress`'s ``sensitivity``), ``accuracy`` (validation accuracy then) and ``detail`` (what
    the transform chose: a rank)."""

    layer: str
    method: str
    setting: float | int | None
    cost: int
    loss: float
    accuracy: float
    detail: str = ""

    @property
    def label(self) -> str:
        """e.g. ``"prune 0.9"``, ``"quantize 4 bits"``, ``"factorize energy 0.9 (rank 12)"``, ``"keep"``."""
        if self.method == "keep":
            return "keep"
        unit = {"quantize": " bits", "share": " bits", "weight_only": " bits"}.get(self.method, "")
        what = f"energy {self.setting}" if self.method == "factorize" else f"{self.setting}{unit}"
        return f"{self.method} {what}" + (f" ({self.detail})" if self.detail else "")


def _check_grid(grid: Mapping[str, Sequence] | None, methods: tuple[str, ...]) -> dict[str, tuple]:
    grid = {} if grid is None else grid
    if not isinstance(grid, Mapping):
        raise TypeError(f"grid must be a mapping method -> settings, got {type(grid).__name__}")
    unknown = sorted(set(grid) - set(METHODS))
    if unknown:
        raise ValueError(f"grid names methods {unknown} the library does not know; allowed {list(METHODS)}")
    checks = {"factorize": functools.partial(check_fraction, low_open=True),
              "prune": functools.partial(check_fraction, high_open=True),
              "quantize": lambda v, label: _bits(v, label, 2, 8), "share": lambda v, label: _bits(v, label, 1, 8),
              "weight_only": lambda v, label: _bits(v, label, 2, 8)}
    out = {}
    for m in methods:
        settings = grid.get(m, DEFAULT_GRID[m])
        if isinstance(settings, (str, bytes)) or not isinstance(settings, Sequence) or not settings:
            raise ValueError(f"grid[{m!r}] must be a non-empty sequence of settings, got {settings!r}")
        out[m] = tuple(checks[m](v, f"grid[{m!r}] entry") for v in settings)
    return out


def _bits(value: object, label: str, lo: int, hi: int) -> int:
    v = _check_cost(value, label)
    if not lo <= v <= hi:
        raise ValueError(f"{label} must be bits in [{lo}, {hi}], got {v}")
    return v


def _apply_one(net: nn.Module, name: str, method: str, setting, seed: int,
               group_size: int | None = None) -> tuple[nn.Module, list]:
    """``net`` with one technique on layer ``name`` (a copy; ``net`` is untouched), and the transform's rows."""
    if method == "factorize":
        kind = "svd" if isinstance(net.get_submodule(name), nn.Linear) else "tucker"
        return factorize(net, method=kind, energy=setting, include=[name])
    if method == "prune":
        return prune(net, amount=setting, include=[name])
    if method == "quantize":
        return quantize_model(net, weight_bits=setting, act_bits=None, include=[name])
    if method == "share":
        return share_weights(net, bits=setting, include=[name], seed=seed)
    if method == "weight_only":
        return quantize_weights(net, bits=setting, group_size=group_size, include=[name])
    return surgery.copy_model(net), []


def _apply(model: nn.Module, choice: Sequence[LayerOption], seed: int, group_size: int | None) -> nn.Module:
    net = model
    for opt in choice:
        net, _ = _apply_one(net, opt.layer, opt.method, opt.setting, seed, group_size)
    return surgery.copy_model(net) if net is model else net


# ---------------------------------------------------------------------------------------------------------------
# costs
# ---------------------------------------------------------------------------------------------------------------

def _belongs(key: str, layer: str) -> bool:
    return key == layer or key.startswith(layer + ".")


def file_layer_bytes(model: nn.Module, layers: Sequence[str]) -> tuple[int, dict[str, int]]:
    """The size of ``model``'s compressed file (:func:`tensorcompress.export.encode_compressed`, Huffman) and, per
    layer of ``layers``, the bytes its tensors take there: each entry's header record (its JSON and a separator)
    plus its payload. What is left — magic, architecture record, the other tensors, checksum — is the file minus
    their sum."""
    data, sizes = encode_compressed(model)
    _, _, _, n_header = _HEADER.unpack_from(data)
    entries = json.loads(bytes(data[_HEADER.size: _HEADER.size + n_header]))["tensors"]
    out = dict.fromkeys(layers, 0)
    for layer in layers:
        out[layer] += sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in entries
                          if _belongs(e["name"], layer))
        out[layer] += sum(_payload(size) for key, size in sizes.items() if key != "header" and _belongs(key, layer))
    return len(data), out


def _payload(size: Mapping) -> int:
    """Payload bytes of one entry from its :func:`encode_compressed` sizes: plain sections and coded streams."""
    return sum(v if isinstance(v, int) else v.table + v.payload for v in size.values())


def _measure(cost: str, net: nn.Module, x1: torch.Tensor, layer: str | None = None) -> int:
    """The cost of ``net`` — its file's bytes, its FLOPs or its latency in µs on ``x1`` — or, for bytes with a
    ``layer``, that layer's bytes in the file."""
    if cost == "bytes":
        size, per_layer = file_layer_bytes(net, [] if layer is None else [layer])
        return size if layer is None else per_layer[layer]
    if cost == "flops":
        return count_flops(net, x1)
    return round(1e6 * time_forward(net, x1, device=x1.device).median)


# ---------------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------------

class AutoLayer(surgery.LayerChange):
    """A report row of :func:`auto_compress`: the option chosen for one layer, its details typed."""

    method = surgery.Detail(str, "``\"keep\"`` or the technique chosen (:data:`METHODS`).")
    setting = surgery.Detail(float, "Its setting: energy, fraction removed, weight bits or codebook bits.",
                             optional=True)
    cost = surgery.Detail(int, "The change of the model's cost when applied alone (bytes, FLOPs or µs).")
    predicted_loss = surgery.Detail(float, "The validation-loss increase measured when applied alone (nats).")


@dataclass
class AutoReport:
    """What :func:`auto_compress` measured, chose and got.

    ``candidates``: every :class:`LayerOption` tried (the sensitivity table); ``choice``: the one chosen per layer;
    ``layers``: the rows (:class:`AutoLayer`); ``cost``: the cost kind, ``budget``, ``original_cost`` and
    ``predicted_cost`` (original plus the chosen changes), ``final_cost`` (measured on the result; for bytes the
    file's size), ``file_bytes``; ``sensitivity``: what a loss is (``"kl"``: the KL divergence from the original's
    outputs; ``"cross_entropy"``: the validation cross-entropy's increase), ``predicted_loss`` (the chosen options'
    sum), ``measured_loss`` (the combination's, before fine-tuning) and ``final_loss`` (after), nats;
    ``original_accuracy``, ``measured_accuracy``, ``final_accuracy`` on the validation data; ``flops`` of the
    result on one input; ``fine_tuning``: its settings; ``group_size``: that of ``weight_only`` options.
    """

    candidates: list[LayerOption]
    choice: list[LayerOption]
    layers: list[AutoLayer]
    cost: str
    budget: int
    sensitivity: str
    original_cost: int
    predicted_cost: int
    final_cost: int
    file_bytes: int
    predicted_loss: float
    measured_loss: float
    final_loss: float
    original_accuracy: float
    measured_accuracy: float
    final_accuracy: float
    flops: int
    fine_tuning: dict = field(default_factory=dict)
    group_size: int | None = None

    def __iter__(self):
        """The rows (:attr:`layers`), one per layer."""
        return iter(self.layers)

    def table(self) -> str:
        """The sensitivity table: per layer, every option's cost change and loss change, the chosen one starred."""
        chosen = {(o.layer, o.method, o.setting) for o in self.choice}
        unit = {"bytes": "bytes", "flops": "FLOPs", "latency": "µs"}[self.cost]
        lines = [f"{'layer':<10} {'option':<36} {'Δ ' + unit:>12} {'loss':>11} {'val acc':>8}"]
        for o in self.candidates:
            star = " *" if (o.layer, o.method, o.setting) in chosen else ""
            lines.append(f"{o.layer:<10} {o.label:<36} {o.cost:>12,} {o.loss:>11.4f} {100 * o.accuracy:>7.1f}%{star}")
        return "\n".join(lines)

    def __str__(self) -> str:
        unit = {"bytes": "bytes", "flops": "FLOPs", "latency": "µs"}[self.cost]
        lines = [f"{o.layer}: {o.label}" for o in self.choice]
        lines += [f"{self.cost}: budget {self.budget:,}, original {self.original_cost:,}, predicted "
                  f"{self.predicted_cost:,}, measured {self.final_cost:,} {unit}; file {self.file_bytes:,} bytes",
                  f"loss ({self.sensitivity}, nats): predicted {self.predicted_loss:.4f}, measured "
                  f"{self.measured_loss:.4f} before and {self.final_loss:.4f} after fine-tuning",
                  f"validation accuracy: original {100 * self.original_accuracy:.1f} %, combined "
                  f"{100 * self.measured_accuracy:.1f} %, fine-tuned {100 * self.final_accuracy:.1f} %"]
        return "\n".join(lines)

    def add_to(self, board: Leaderboard, models: nn.Module | Sequence[nn.Module], *, name: str | None = None):
        """Add the compressed ``models`` to ``board`` as one row of family ``"automatic"``, its bytes the compressed
        file's (:attr:`file_bytes`), its note the choice per layer.

        Parameters
        ----------
        board : Leaderboard
            The board to add the row to.
        models : nn.Module or sequence of nn.Module
            The result of :func:`auto_compress`, one per fine-tuning seed (the row shows their mean ± std).
        name : str, optional
            The row's name (default: the cost and the budget).

        Returns
        -------
        Entry
            The row added.
        """
        if not isinstance(board, Leaderboard):
            raise TypeError(f"board must be a tensorcompress.metrics.Leaderboard, got {type(board).__name__}")
        name = name or f"automatic, {self.cost} <= {self.budget:,}"
        return board.add(name, models, family="automatic", nbytes=self.file_bytes, bytes_from="compressed file",
                         note=", ".join(f"{o.layer}: {o.label}" for o in self.choice))


# ---------------------------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------------------------

def _check_methods(methods: object) -> tuple[str, ...]:
    if isinstance(methods, str) or not isinstance(methods, Sequence) or not methods:
        raise TypeError(f"methods must be a non-empty sequence of method names from {list(METHODS)}, got "
                        f"{methods!r}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"methods {unknown} are not techniques the library knows; allowed {list(METHODS)}")
    return tuple(dict.fromkeys(methods))


def _logits(net: nn.Module, val) -> torch.Tensor:
    """``net``'s logits on ``val``, where ``net`` lives, in float64."""
    device, dtype = surgery.device_of(net), surgery.dtype_of(net)
    with surgery.kept_modes(net, False), torch.no_grad():  # inputs cast to the model's dtype, as evaluate does
        outs = [net(x.to(device, dtype) if x.is_floating_point() else x.to(device))
                for x in surgery.input_batches(val, batch_size=500)]
    return torch.cat([o[0] if isinstance(o, (tuple, list)) else o for o in outs]).double().cpu()


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    r"""Mean :math:`\mathrm{KL}(p_{\text{ref}} \| p)` over the samples (over the tokens of ``(B, T, V)`` logits),
    nats."""
    log_p, log_q = reference.log_softmax(-1), logits.log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def _targets(val) -> torch.Tensor:
    """The targets of ``val`` (a Dataset or a DataLoader of ``(x, y)``), in the order :func:`_logits` reads it."""
    batches = val if isinstance(val, DataLoader) else DataLoader(val, batch_size=500, shuffle=False)
    return torch.cat([b[1].cpu() for b in batches])


class _Judge:
    """The sensitivity of a changed model against the original, on the validation data (where each model lives)."""

    def __init__(self, model: nn.Module, val, sensitivity: str) -> None:
        self.val, self.sensitivity = val, sensitivity
        self.base = evaluate(model, val)
        self.reference = _logits(model, val) if sensitivity == "kl" else None
        self.targets = _targets(val) if sensitivity == "kl" else None

    def __call__(self, net: nn.Module) -> tuple[float, float]:
        """``(loss, accuracy)``: the KL divergence from the original's outputs or the cross-entropy increase."""
        if self.sensitivity == "kl":  # one forward pass: the accuracy (per sample or token) from the same logits
            logits = _logits(net, self.val)
            correct = int((logits.argmax(-1) == self.targets).sum())
            return _kl(self.reference, logits), correct / self.targets.numel()
        ev = evaluate(net, self.val)
        return ev.loss - self.base.loss, ev.accuracy


def _scan(model: nn.Module, names: list[str], grid: dict[str, tuple], judge: _Judge, cost: str, x1: torch.Tensor,
          seed: int, group_size: int | None) -> list[LayerOption]:
    """Every option of every layer applied alone: its cost change and its sensitivity (``weight_only``: Linear
    layers only)."""
    whole = None if cost == "bytes" else _measure(cost, model, x1)
    own = file_layer_bytes(model, names)[1] if cost == "bytes" else None
    options = []
    for name in names:
        before = own[name] if cost == "bytes" else whole
        options.append(LayerOption(name, "keep", None, 0, 0.0, judge.base.accuracy))
        for method, settings in grid.items():
            if method == "weight_only" and not isinstance(model.get_submodule(name), nn.Linear):
                continue
            for setting in settings:
                net, rows = _apply_one(model, name, method, setting, seed, group_size)
                loss, accuracy = judge(net)
                detail = (f"rank {rows[0].rank}" if method == "factorize"
                          else f"group {rows[0].group_size}" if method == "weight_only" else "")
                after = _measure(cost, net, x1, name if cost == "bytes" else None)
                options.append(LayerOption(name, method, setting, after - before, loss, accuracy, detail))
    return options


def _check_candidates(candidates: object, names: list[str]) -> list[LayerOption]:
    if isinstance(candidates, AutoReport):
        candidates = candidates.candidates
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence) or not all(
            isinstance(o, LayerOption) for o in candidates):
        raise TypeError(f"candidates must be an AutoReport or its candidates (LayerOptions), got "
                        f"{type(candidates).__name__}")
    layers = list(dict.fromkeys(o.layer for o in candidates))
    if layers != names:
        raise ValueError(f"candidates are for layers {layers}, the selection is {names}: scan again")
    return list(candidates)


def _check_groups(model: nn.Module, names: list[str], group_size: object) -> None:
    if group_size is None:
        return
    check_positive_int(group_size, "group_size")
    for name in names:
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Linear) and layer.in_features % group_size:
            raise ValueError(f"group_size={group_size} does not divide the {layer.in_features} inputs of layer "
                             f"{name!r}: give a divisor of every selected Linear layer's inputs, or None")


def _freeze_codes(net: nn.Module) -> None:
    """Freeze every fake-quantized weight: its codes, and so their entropy-coded size, stay as allocated."""
    for module in net.modules():
        if parametrize.is_parametrized(module, "weight") and isinstance(module.parametrizations.weight[0],
                                                                        WeightQuantizer):
            module.parametrizations.weight.original.requires_grad_(False)


def auto_compress(model: nn.Module, train, *, val, budget: int, cost: str = "bytes",
                  methods: Sequence[str] = DEFAULT_METHODS, grid: Mapping[str, Sequence] | None = None,
                  group_size: int | None = None, sensitivity: str = "kl",
                  candidates: AutoReport | Sequence[LayerOption] | None = None, include=None, exclude=None,
                  seed: int = 0, epochs: int = 2, lr: float = 5e-4, T: float = 4.0, alpha: float = 0.9, device=None,
                  **fit_options) -> tuple[nn.Module, AutoReport]:
    """Choose one technique per layer under a budget, apply them together, fine-tune by distillation, measure.

    1. Per selected ``nn.Linear`` / ``nn.Conv2d`` layer, every setting of ``grid`` for each of ``methods``, plus
       keeping the layer, is applied alone; its cost change and its sensitivity are measured (module docstring).
    2. :func:`allocate` picks one option per layer: the least summed sensitivity within ``budget``.
    3. The options are applied together; the result is fine-tuned for ``epochs`` by
       :func:`tensorcompress.distillation.distill` from ``model`` (quantized weights frozen) and measured.

    Parameters
    ----------
    model : nn.Module
        A trained classifier, or a language model returning ``(B, T, V)`` logits for ``(B, T)`` tokens (the
        sensitivity and the accuracy are then per token); left untouched.
    train : Dataset
        Fine-tuning data.
    val : Dataset
        Validation data, ``(inputs, targets)``: every number of the scan and of the report (decide here, test
        elsewhere).
    budget : int
        The cost the result may have, in the unit of ``cost``: between the cheapest combination and the model's own.
    cost : {"bytes", "flops", "latency"}
        Bytes of the compressed file, FLOPs of one forward pass on one input, or its latency in microseconds.
    methods : sequence of {"factorize", "prune", "quantize", "share", "weight_only"}
        The techniques to choose among (default :data:`DEFAULT_METHODS`, all but ``"weight_only"``).
    grid : mapping method -> settings, optional
        Settings per method (default :data:`DEFAULT_GRID`): energies in ``(0, 1]`` kept by ``factorize``
        (SVD for Linear, Tucker-2 for Conv2d layers), fractions in ``[0, 1)`` removed by ``prune``, weight bits in
        ``[2, 8]`` for ``quantize`` (fake-quantized per output channel) and for ``weight_only``
        (:func:`~tensorcompress.quantization.quantize_weights`, RTN: packed codes with a grid per group of inputs,
        Linear layers only), codebook bits in ``[1, 8]`` for ``share``.
    group_size : int, optional
        Inputs per grid of ``weight_only``, dividing every selected Linear layer's inputs; ``None``: one grid per
        output row.
    sensitivity : {"kl", "cross_entropy"}
        An option's loss: the mean KL divergence of the changed model's outputs from the original's on ``val``
        (default; never negative), or the increase of the validation cross-entropy (negative where an option
        happens to help on the validation images).
    candidates : AutoReport or sequence of LayerOption, optional
        The scan of an earlier call on the same model, validation data, cost, grid and sensitivity: skips step 1
        (to try several budgets or seeds).
    include, exclude : fnmatch patterns of the layers to compress (default all Linear and Conv2d).
    seed : int
        Seeds k-means (``share``) and the fine-tuning.
    epochs, lr, T, alpha : fine-tuning by distillation (``epochs=0``: none).
    device : where to fine-tune (the scan measures each model where ``model`` lives).
    **fit_options
        Passed to :func:`tensorcompress.fit` through :func:`~tensorcompress.distillation.distill` (``batch_size``
        ...).

    Returns
    -------
    (nn.Module, AutoReport)
        The compressed, fine-tuned model (eval mode) and the report.

    Raises
    ------
    ValueError
        An unknown method, cost kind or sensitivity, a model with nothing selectable, a budget above the model's
        own cost or below the cheapest combination of options (the message gives both numbers).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    methods = _check_methods(methods)
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {list(COSTS)}, got {cost!r}")
    if sensitivity not in SENSITIVITIES:
        raise ValueError(f"sensitivity must be one of {list(SENSITIVITIES)}, got {sensitivity!r}")
    budget = _check_cost(budget, "budget")
    grid = _check_grid(grid, methods)
    epochs = check_positive_int(epochs, "epochs", minimum=0)
    names = [s.name for s in surgery.select(model, (nn.Linear, nn.Conv2d), include=include, exclude=exclude,
                                            action="auto_compress")]
    if "weight_only" in methods:  # before the scan, not at its first Linear layer
        _check_groups(model, names, group_size)
    x1 = surgery.inputs_of(val[0]).unsqueeze(0).to(surgery.device_of(model))
    x1 = x1.to(surgery.dtype_of(model)) if x1.is_floating_point() else x1
    original_cost = _measure(cost, model, x1)
    if budget > original_cost:
        raise ValueError(f"budget={budget:,} is above the model's own cost, {original_cost:,} {cost}: it fits "
                         f"already; give a smaller budget")

    judge = _Judge(model, val, sensitivity)
    options = (_scan(model, names, grid, judge, cost, x1, seed, group_size) if candidates is None
               else _check_candidates(candidates, names))
    by_layer = [[o for o in options if o.layer == n] for n in names]
    floor = sum(min(o.cost for o in layer) for layer in by_layer)
    if original_cost + floor > budget:
        raise ValueError(f"budget={budget:,} {cost} is below the cheapest combination of options, "
                         f"{original_cost + floor:,}: give a larger budget or coarser settings in grid")
    # the budget on the changes, with each layer's costs shifted to >= 0 as allocate takes them
    picked = allocate([[(o.cost - min(p.cost for p in layer), o.loss) for o in layer] for layer in by_layer],
                      budget - original_cost - floor)
    choice = [layer[j] for layer, j in zip(by_layer, picked, strict=True)]

    net = _apply(model, choice, seed, group_size)
    combined = judge(net)
    if epochs:
        _freeze_codes(net)
        distill(net, model, train, T=T, alpha=alpha, epochs=epochs, lr=lr, seed=seed, device=device,
                progress=False, **fit_options)
    net.eval()
    final = judge(net) if epochs else combined
    file_bytes = len(encode_compressed(net)[0])
    rows = [AutoLayer.between(o.layer, surgery.footprint(model.get_submodule(o.layer)),
                              surgery.footprint(net.get_submodule(o.layer)),
                              {"method": o.method, "setting": o.setting, "cost": o.cost, "predicted_loss": o.loss})
            for o in choice]
    x1 = x1.to(surgery.device_of(net))
    report = AutoReport(
        candidates=options, choice=choice, layers=rows, cost=cost, budget=budget, sensitivity=sensitivity,
        original_cost=original_cost, predicted_cost=original_cost + sum(o.cost for o in choice),
        final_cost=file_bytes if cost == "bytes" else _measure(cost, net, x1), file_bytes=file_bytes,
        predicted_loss=math.fsum(o.loss for o in choice), measured_loss=combined[0], final_loss=final[0],
        original_accuracy=judge.base.accuracy, measured_accuracy=combined[1], final_accuracy=final[1],
        flops=count_flops(net, x1),
        fine_tuning={"epochs": epochs, "lr": lr, "T": T, "alpha": alpha, "seed": seed, **fit_options},
        group_size=group_size)
    return net, report
