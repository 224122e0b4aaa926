r"""How far a compressed network is from the network it was made from — measures that do not saturate.

Top-1 accuracy counts errors; when the uncompressed network is right on almost every test image, two compression
methods can differ by one or two images and no accuracy can tell them apart. Three finer measures compare the
compressed network :math:`q` with the uncompressed one :math:`p` on every test example :math:`x_i` (label
:math:`y_i`), in nats:

.. math::

    \text{CE} = -\frac1N \sum_i \log q(y_i \mid x_i), \qquad
    \text{KL} = \frac1N \sum_i \sum_c p(c \mid x_i)\, \log\frac{p(c \mid x_i)}{q(c \mid x_i)}, \qquad
    \text{agreement} = \frac1N \sum_i [\arg\max_c q(c \mid x_i) = \arg\max_c p(c \mid x_i)].

KL(p ‖ q) is the expected extra code length, per example, of coding the uncompressed network's predictions with the
compressed one's; it is zero exactly when the two predict the same distributions, and it keeps moving when the
accuracy no longer does (Hinton et al. 2015 distil against it; Frantar et al. 2022 and most work on compressed
language models report it beside perplexity).

Over seeds, :func:`separated` says whether two methods can be told apart: their intervals mean ± std (sample
standard deviation, :class:`~tensorcompress.metrics.SeedStats`) do not overlap. It is a deliberately plain rule,
not a significance test — with three seeds a t-test has two degrees of freedom and little power — and a reader
should read "not separated" as "these runs do not show a difference", never as "equal".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..surgery import device_of, dtype_of, kept_modes
from ..train import split_outputs
from .seeds import SeedStats

__all__ = ["Fidelity", "fidelity", "separated"]


@dataclass(frozen=True)
class Fidelity:
    """A compressed network against the uncompressed one on labelled data (module docstring).

    Attributes
    ----------
    accuracy : float
        Top-1 accuracy of the compressed network on the labels, in [0, 1].
    cross_entropy : float
        Its mean cross-entropy on the labels, nats per example.
    kl : float
        KL(p_uncompressed ‖ p_compressed), nats per example (≥ 0).
    agreement : float
        Fraction of examples on which both networks predict the same class.
    n : int
        The number of examples.
    """

    accuracy: float
    cross_entropy: float
    kl: float
    agreement: float
    n: int

    def as_dict(self) -> dict[str, float]:
        """The four measures by name (``accuracy``, ``cross_entropy``, ``kl``, ``agreement``), e.g. for
        :func:`~tensorcompress.metrics.over_seeds`."""
        return {"accuracy": self.accuracy, "cross_entropy": self.cross_entropy, "kl": self.kl,
                "agreement": self.agreement}


def _log_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of ``model`` on ``x`` in float64 on the CPU, the input cast to the model's device and dtype."""
    logits, _ = split_outputs(model(x.to(device=device_of(model), dtype=dtype_of(model))))
    if logits.ndim != 2:
        raise ValueError(f"the models must return logits of shape (N, classes), got shape {tuple(logits.shape)}")
    return torch.log_softmax(logits.detach().to("cpu", torch.float64), dim=1)


def _labelled_batches(data: object, batch_size: int):
    if isinstance(data, torch.utils.data.Dataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError("data must yield labelled batches (inputs, labels, ...), got a batch without labels")
        yield batch[0], batch[1]


@torch.no_grad()
def fidelity(reference: nn.Module, model: nn.Module, data: object, *, batch_size: int = 1000) -> Fidelity:
    """Accuracy, cross-entropy, KL(p_reference ‖ p_model) and top-1 agreement of ``model`` on ``data``.

    Both networks run in eval mode without gradients, each on its own device and dtype; their modes are restored.
    The sums run in float64, so the KL of a network against itself is exactly 0.

    Parameters
    ----------
    reference : nn.Module
        The uncompressed classifier :math:`p`, returning logits ``(N, C)``.
    model : nn.Module
        The compressed classifier :math:`q`, the same classes.
    data : Dataset or iterable of (inputs, labels) batches
        Labelled examples, e.g. a ``TensorDataset`` or a ``DataLoader``.
    batch_size : int
        Examples per forward pass when ``data`` is a ``Dataset``.

    Returns
    -------
    Fidelity

    Raises
    ------
    TypeError
        If a model is not an ``nn.Module`` or the data are not labelled batches.
    ValueError
        For empty data, logits that are not ``(N, C)``, different class counts, or non-finite logits.
    """
    for name, m in (("reference", reference), ("model", model)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    correct = agree = n = 0
    ce = kl = 0.0
    with kept_modes(reference, False), kept_modes(model, False):
        for x, y in _labelled_batches(data, batch_size):
            log_p, log_q = _log_probs(reference, x), _log_probs(model, x)
            if log_p.shape != log_q.shape:
                raise ValueError(f"reference and model must predict the same classes: logits of shape "
                                 f"{tuple(log_p.shape)} and {tuple(log_q.shape)}")
            if not (torch.isfinite(log_p).all() and torch.isfinite(log_q).all()):
                raise ValueError("a model returned NaN or Inf logits: its KL and cross-entropy would mean nothing")
            y = torch.as_tensor(y).to("cpu", torch.long)
            correct += int((log_q.argmax(1) == y).sum())
            agree += int((log_q.argmax(1) == log_p.argmax(1)).sum())
            ce -= float(log_q.gather(1, y[:, None]).sum())
            # xlogy-style: classes where p underflows to 0 contribute 0, not 0 * (-inf)
            kl += float(torch.where(log_p > -torch.inf, log_p.exp() * (log_p - log_q), 0.0).sum())
            n += y.shape[0]
    if n == 0:
        raise ValueError("data must hold at least one labelled example, got none")
    return Fidelity(accuracy=correct / n, cross_entropy=ce / n, kl=max(kl / n, 0.0), agreement=agree / n, n=n)


def separated(a: SeedStats, b: SeedStats) -> bool:
    """Whether two results over seeds can be told apart: the intervals mean ± std do not overlap.

    Parameters
    ----------
    a, b : SeedStats
        The same measure of two methods, e.g. from :func:`~tensorcompress.metrics.over_seeds`.

    Returns
    -------
    bool
        ``True`` when ``a.mean + a.std < b.mean - b.std`` or ``b.mean + b.std < a.mean - a.std``; touching
        intervals are not separated.
    """
    for name, s in (("a", a), ("b", b)):
        if not isinstance(s, SeedStats):
            raise TypeError(f"{name} must be a SeedStats (mean ± std over seeds), got {type(s).__name__}")
    return a.mean + a.std < b.mean - b.std or b.mean + b.std < a.mean - a.std
