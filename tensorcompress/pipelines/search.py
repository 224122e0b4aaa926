r"""Structure search: choose the channel widths of :class:`tensorcompress.models.SmallCNN` under a FLOP or byte
budget.

The search space is every pair :math:`(c_1, c_2)` from a grid of widths (the channels of SmallCNN's two blocks).
Each pair's cost is exact and cheap to know before any training: FLOPs per sample from
:func:`tensorcompress.flops` (a forward pass under ``torch.utils.flop_counter``; for SmallCNN on
:math:`H \times W` inputs with :math:`c_0` input channels and :math:`K` classes,
:math:`2\bigl[HW\,9(c_0c_1 + c_1^2) + \tfrac{HW}{4}\,9(c_1c_2 + c_2^2) + c_2K\bigr]`) and bytes from
:func:`tensorcompress.model_size_bytes` (what ``torch.save`` writes). The pairs over budget are never trained.

Accuracy is what costs, so the search ranks the affordable pairs by a **cheap proxy** — the validation accuracy
after ``proxy_epochs`` of training from scratch — and trains only the ``n_final`` best of them properly
(``final_epochs``, cosine schedule); the winner is the finalist with the best validation accuracy. Two samplers:

* ``"random"`` — a uniform sample of affordable pairs. Bergstra & Bengio (2012), "Random search for hyper-parameter
  optimization", JMLR 13, and Li & Talwalkar (2019), "Random search and reproducibility for neural architecture
  search", UAI: a strong baseline that most architecture searches fail to beat;
* ``"evolution"`` — regularised (aging) evolution (Real et al. 2019, "Regularized evolution for image classifier
  architecture search", AAAI): a population of evaluated pairs; repeatedly the better of two random members is
  mutated (one width moved one step along the grid), the child evaluated, the oldest member dropped.

Proxy accuracies after one epoch are noisy and favour architectures that learn fast, not those that end best
(the known weakness of low-fidelity proxies; Zela et al. 2018, "Towards automated deep learning: efficient joint
neural architecture and hyperparameter search"): this is why several finalists are trained in full. Every decision
uses the ``val`` set; report test accuracy on data the search never saw.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from .._validation import check_positive_int
from ..metrics.measure import flops as count_flops
from ..metrics.measure import model_size_bytes
from ..models import SmallCNN
from ..train import evaluate, fit, set_seed

__all__ = ["Candidate", "SearchResult", "width_search", "width_cost"]

_METHODS = ("random", "evolution")


@dataclass(frozen=True)
class Candidate:
    """One pair of widths: ``channels`` ``(c1, c2)``, ``flops`` per sample, ``bytes`` of its ``torch.save`` file,
    ``proxy_accuracy`` (validation accuracy after the short training) and ``accuracy`` (validation accuracy after
    the full training; ``None`` unless a finalist)."""

    channels: tuple[int, int]
    flops: int
    bytes: int
    proxy_accuracy: float
    accuracy: float | None = None


@dataclass
class SearchResult:
    """What :func:`width_search` found: the ``best`` finalist, its trained ``model``, every evaluated
    ``candidates`` (in evaluation order, finalists with their full-training ``accuracy``), the ``budget`` and the
    number of affordable pairs in the grid (``n_feasible``). ``str(result)`` is the candidates table."""

    best: Candidate
    model: nn.Module
    candidates: list[Candidate]
    budget: dict[str, int] = field(default_factory=dict)
    n_feasible: int = 0

    @property
    def finalists(self) -> list[Candidate]:
        """The candidates trained in full, best validation accuracy first."""
        return sorted((c for c in self.candidates if c.accuracy is not None), key=lambda c: (-c.accuracy, c.flops))

    def to_dict(self) -> list[dict]:
        """One dict per candidate (for ``pandas.DataFrame``)."""
        return [{"channels": c.channels, "flops": c.flops, "bytes": c.bytes, "proxy_accuracy": c.proxy_accuracy,
                 "accuracy": c.accuracy} for c in self.candidates]

    def table(self) -> str:
        """The candidates, best proxy accuracy first; finalists show their full-training accuracy, the best is
        starred."""
        budget = ", ".join(f"{k} <= {v:,}" for k, v in self.budget.items())
        lines = [f"width search under {budget}: {len(self.candidates)} of {self.n_feasible} affordable pairs "
                 f"evaluated",
                 f"{'channels':>10} {'FLOPs':>10} {'bytes':>9} {'proxy acc':>10} {'val acc':>8}"]
        for c in sorted(self.candidates, key=lambda c: (-c.proxy_accuracy, c.flops)):
            acc = "" if c.accuracy is None else f"{100 * c.accuracy:.1f} %"
            star = " *" if c.channels == self.best.channels else ""
            lines.append(f"{str(c.channels):>10} {c.flops:>10,} {c.bytes:>9,} {100 * c.proxy_accuracy:>8.1f} % "
                         f"{acc:>8}{star}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _shape_and_classes(train) -> tuple[tuple[int, int, int], int]:
    if isinstance(train, torch.utils.data.TensorDataset):
        x, y = train.tensors[0], train.tensors[1]
    else:
        xs, ys = zip(*(train[i] for i in range(len(train))), strict=True)
        x, y = torch.stack(xs), torch.as_tensor(ys)
    if x.ndim != 4 or x.shape[2] != x.shape[3]:
        raise ValueError(f"train must hold square images N x C x H x H for SmallCNN, got inputs of shape "
                         f"{tuple(x.shape)}")
    return (int(x.shape[1]), int(x.shape[2]), int(x.shape[3])), int(y.max()) + 1


def width_cost(channels: tuple[int, int], input_shape: tuple[int, int, int], num_classes: int) -> tuple[int, int]:
    """``(FLOPs per sample, bytes)`` of a SmallCNN with these ``channels`` for inputs ``C x H x H`` — measured by
    :func:`tensorcompress.flops` and :func:`tensorcompress.model_size_bytes`, no training.

    Parameters
    ----------
    channels : (int, int)
        Widths of the two blocks.
    input_shape : (int, int, int)
        ``(C, H, W)`` of one input (square: ``H`` is used for both sides).
    num_classes : int
        Outputs of the classifier.
    """
    c, h, _ = input_shape
    model = SmallCNN(in_channels=c, num_classes=num_classes, input_size=h, channels=tuple(channels))
    return count_flops(model, torch.zeros(1, c, h, h)), model_size_bytes(model)


def _check_widths(widths: object) -> tuple[int, ...]:
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) == 0:
        raise TypeError(f"widths must be a non-empty sequence of positive ints, got {widths!r}")
    out = tuple(sorted({check_positive_int(w, "widths[i]") for w in widths}))
    return out


def _check_budget(name: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    return int(value)


def width_search(train, val, *, max_flops: int | None = None, max_bytes: int | None = None,
                 widths: Sequence[int] = (4, 8, 12, 16, 24, 32, 48, 64), method: str = "random",
                 n_candidates: int = 12, n_final: int = 3, proxy_epochs: int = 1, final_epochs: int = 10,
                 lr: float = 3e-3, batch_size: int = 64, seed: int = 0,
                 device: torch.device | str | None = None) -> SearchResult:
    """Search SmallCNN's channel widths ``(c1, c2)`` in ``widths × widths`` under a FLOP and/or byte budget.

    Parameters
    ----------
    train, val : Dataset
        Images ``C × H × H`` with integer labels; ``val`` takes every decision (proxy ranking and final choice).
    max_flops : int, optional
        FLOPs per sample (:func:`tensorcompress.flops` on a batch of one) the model may cost.
    max_bytes : int, optional
        Bytes of its ``torch.save`` file (:func:`tensorcompress.model_size_bytes`). Give at least one budget.
    widths : sequence of int
        The grid each of ``c1`` and ``c2`` is drawn from.
    method : {"random", "evolution"}
        The sampler (see the module docstring).
    n_candidates : int
        Pairs evaluated with the proxy (at most the number of affordable pairs).
    n_final : int
        The best ``n_final`` by proxy accuracy are trained for ``final_epochs``.
    proxy_epochs, final_epochs, lr, batch_size : training of the proxy and of the finalists (Adam; cosine schedule
        for the finalists), each from a fresh initialisation seeded with ``seed``.
    seed : int
        Seeds the sampler, the initialisations and the data order: the same call gives the same search.
    device : where to train (default CPU).

    Returns
    -------
    SearchResult

    Raises
    ------
    ValueError
        If no budget is given, a budget is not positive, ``method`` is unknown, or no pair of the grid meets the
        budget (the message gives the cheapest pair's cost).
    """
    max_flops, max_bytes = _check_budget("max_flops", max_flops), _check_budget("max_bytes", max_bytes)
    if max_flops is None and max_bytes is None:
        raise ValueError("give a budget: max_flops (FLOPs per sample) and/or max_bytes (bytes of the saved model)")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    widths = _check_widths(widths)
    for name, v in (("n_candidates", n_candidates), ("n_final", n_final), ("proxy_epochs", proxy_epochs),
                    ("final_epochs", final_epochs), ("batch_size", batch_size)):
        check_positive_int(v, name)
    input_shape, num_classes = _shape_and_classes(train)
    budget = {k: v for k, v in (("flops", max_flops), ("bytes", max_bytes)) if v is not None}

    costs = {(a, b): width_cost((a, b), input_shape, num_classes) for a in widths for b in widths}
    feasible = [p for p, (f, s) in costs.items()
                if (max_flops is None or f <= max_flops) and (max_bytes is None or s <= max_bytes)]
    if not feasible:
        cheapest = min(costs, key=lambda p: costs[p])
        f, s = costs[cheapest]
        raise ValueError(f"no width pair in widths={widths} meets the budget {budget}: the cheapest, {cheapest}, "
                         f"costs {f:,} FLOPs per sample and {s:,} bytes. Raise the budget or add smaller widths")

    def build(channels: tuple[int, int]) -> SmallCNN:
        with set_seed(seed):
            return SmallCNN(in_channels=input_shape[0], num_classes=num_classes, input_size=input_shape[1],
                            channels=channels)

    def train_and_score(channels: tuple[int, int], epochs: int, scheduler) -> tuple[nn.Module, float]:
        model = build(channels)
        fit(model, train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=False,
            scheduler=scheduler, device=device)
        return model, evaluate(model, val).accuracy

    evaluated: dict[tuple[int, int], Candidate] = {}

    def score(channels: tuple[int, int]) -> Candidate:
        _, acc = train_and_score(channels, proxy_epochs, None)
        cand = Candidate(channels, *costs[channels], proxy_accuracy=acc)
        evaluated[channels] = cand
        return cand

    rng = random.Random(seed)
    n_candidates = min(n_candidates, len(feasible))
    if method == "random":
        for p in rng.sample(feasible, n_candidates):
            score(p)
    else:
        _evolve(feasible, widths, n_candidates, rng, score, evaluated)

    ranked = sorted(evaluated.values(), key=lambda c: (-c.proxy_accuracy, c.flops))
    best_model, best = None, None
    for cand in ranked[:n_final]:
        model, acc = train_and_score(cand.channels, final_epochs, "cosine")
        evaluated[cand.channels] = replace(cand, accuracy=acc)
        if best is None or (acc, -cand.flops) > (best.accuracy, -best.flops):
            best_model, best = model, evaluated[cand.channels]
    return SearchResult(best=best, model=best_model.eval(), candidates=list(evaluated.values()), budget=budget,
                        n_feasible=len(feasible))


def _evolve(feasible, widths, n_candidates, rng, score, evaluated) -> None:
    """Aging evolution: tournament of two, mutate one width by one grid step, drop the oldest."""
    allowed = set(feasible)
    index = {w: i for i, w in enumerate(widths)}
    population = [score(p) for p in rng.sample(feasible, min(n_candidates, max(2, n_candidates // 3)))]
    while len(evaluated) < n_candidates:
        child = None
        for _ in range(50):
            a, b = rng.sample(population, 2) if len(population) > 1 else (population[0], population[0])
            parent = a if (a.proxy_accuracy, -a.flops) >= (b.proxy_accuracy, -b.flops) else b
            pos, step = rng.randrange(2), rng.choice((-1, 1))
            j = index[parent.channels[pos]] + step
            if 0 <= j < len(widths):
                c = list(parent.channels)
                c[pos] = widths[j]
                if tuple(c) in allowed and tuple(c) not in evaluated:
                    child = tuple(c)
                    break
        if child is None:  # the neighbourhood is exhausted: a fresh random pair keeps the search going
            child = rng.choice([p for p in feasible if p not in evaluated])
        population.append(score(child))
        population.pop(0)
