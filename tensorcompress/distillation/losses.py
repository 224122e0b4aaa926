r"""Distillation losses: soft targets (Hinton et al. 2015), hints (FitNets) and attention transfer.

**Soft targets.** A network's logits :math:`z` give class probabilities at temperature :math:`T`,
:math:`p_i(T) = e^{z_i/T} / \sum_j e^{z_j/T}`; a high :math:`T` spreads the mass over the wrong classes, whose
relative sizes ("a 2 that looks like a 3") are what the teacher knows beyond the label. With teacher logits
:math:`v`, student logits :math:`z`, labels :math:`y` and :math:`N` samples,

.. math:: \mathcal L = \alpha\, T^2\, \frac1N \sum_n \mathrm{KL}\bigl(p(v_n/T)\,\|\,p(z_n/T)\bigr)
          + (1 - \alpha)\, \frac1N \sum_n \mathrm{CE}(z_n, y_n).

**Why** :math:`T^2`. With :math:`q = p(z/T)` and :math:`p = p(v/T)`,
:math:`\mathrm{KL}(p\|q) = \sum_i p_i \log p_i - \sum_i p_i \log q_i` and
:math:`\partial \log q_i / \partial z_k = (\delta_{ik} - q_k)/T`, so

.. math:: \frac{\partial}{\partial z_k}\, T^2\, \mathrm{KL}(p\|q) = T\,(q_k - p_k).

For large :math:`T` expand :math:`e^{z_i/T} = 1 + z_i/T + O(T^{-2})`; with logits centred per sample
(:math:`\sum_i z_i = 0`, which changes no softmax) :math:`q_k = 1/K + z_k/(K T) + O(T^{-2})` for :math:`K` classes,
hence :math:`T(q_k - p_k) = (z_k - v_k)/K + O(1/T)`: the gradient of the :math:`T^2`-scaled soft term tends to that
of the logit-matching loss :math:`\frac{1}{2K}\|z - v\|^2` and stays of order one at every temperature. Without the
factor it would shrink as :math:`1/T^2` and the soft term would vanish beside the hard one when :math:`T` changes
(Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network", Sec. 2.1). The hard term's gradient is
:math:`(p_k(z) - [k = y])/N`. Both terms are computed from ``log_softmax`` (no ``log`` of a probability that
underflowed): ``kl_div(log_softmax(z/T), log_softmax(v/T), log_target=True, reduction="batchmean")``.

**Hints** (Romero et al. 2015, "FitNets: hints for thin deep nets", ICLR): a student layer's output
:math:`v_g` is mapped by a learned regressor :math:`r` to the shape of a teacher layer's output :math:`u_h` and
pulled towards it, :math:`\tfrac12 \|u_h - r(v_g)\|^2` per sample. The regressor is a linear layer for vectors and,
for maps, a convolution whose kernel is :math:`(H_g - H_h + 1) \times (W_g - W_h + 1)` (:math:`1 \times 1` when the
spatial sizes agree), as in the paper: :math:`C_g C_h k_1 k_2` weights that are thrown away after training.

**Attention transfer** (Zagoruyko & Komodakis 2017, "Paying more attention to attention", ICLR): a feature map
:math:`A \in \mathbb R^{C \times H \times W}` gives the spatial map :math:`Q = \sum_c |A_c|^p` (:math:`p = 2`),
flattened and normalised, :math:`\mathrm{at}(A) = Q / \|Q\|_2`; the loss is
:math:`\tfrac\beta2 \sum_j \|\mathrm{at}(A_S^j) - \mathrm{at}(A_T^j)\|_2` over pairs :math:`j` of layers with the
same spatial size (any channel counts), averaged over the batch. (The authors' code squares the difference and takes
a mean over pixels, with :math:`\beta = 10^3`; this is the paper's formula, whose scale does not depend on
:math:`H W`.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .._validation import check_finite, check_tensor, compute_dtype

__all__ = ["kd_loss", "hint_loss", "hint_regressor", "attention_map", "attention_transfer_loss"]


def _check_real(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def check_temperature(T: object) -> float:
    """``T`` as a float if it is a finite number ``> 0``, else raise."""
    T = _check_real(T, "T")
    if T <= 0:
        raise ValueError(f"T (the temperature) must be > 0, got {T}")
    return T


def check_alpha(alpha: object) -> float:
    """``alpha`` as a float if it is a number in ``[0, 1]``, else raise."""
    alpha = _check_real(alpha, "alpha")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (the weight of the soft targets) must be in [0, 1], got {alpha}")
    return alpha


def _check_logits(z: object, name: str) -> torch.Tensor:
    z = check_tensor(z, name, floating=True)
    if z.ndim not in (2, 3):
        raise ValueError(f"{name} must be N × K class scores (2 dimensions) or B × L × V sequence logits "
                         f"(3 dimensions), got shape {tuple(z.shape)}")
    compute_dtype(z, name)  # refuses size 0
    return check_finite(z, name)


def _check_targets(targets: object, shape: tuple[int, ...], k: int, ignore_index: int) -> torch.Tensor:
    y = check_tensor(targets, "targets")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"targets must hold integer class indices, got dtype {y.dtype}")
    if tuple(y.shape) != shape:
        raise ValueError(f"targets must have shape {shape} to match the logits, got {tuple(y.shape)}")
    counted = y[y != ignore_index]
    if counted.numel() == 0:
        raise ValueError(f"every target equals ignore_index={ignore_index}: no token to average the loss over")
    lo, hi = int(counted.min()), int(counted.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"targets must be class indices in [0, {k - 1}] (or ignore_index={ignore_index}), got "
                         f"values in [{lo}, {hi}]")
    return y


def _kd_rows(z: torch.Tensor, v: torch.Tensor, y: torch.Tensor | None, T: float, alpha: float) -> torch.Tensor:
    """The loss of ``N × K`` scores ``z`` against ``v`` (and labels ``y``), checked, every row counted."""
    dtype = compute_dtype(z, "student_logits")
    zc, vc = z.to(dtype), v.detach().to(dtype)
    soft = F.kl_div(F.log_softmax(zc / T, dim=1), F.log_softmax(vc / T, dim=1), reduction="batchmean",
                    log_target=True) * (T * T)
    if y is None:
        return soft.to(z.dtype)
    loss = alpha * soft + (1.0 - alpha) * F.cross_entropy(zc, y.to(z.device))
    return loss.to(z.dtype)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None, *,
            T: float = 4.0, alpha: float = 0.9, ignore_index: int = -100) -> torch.Tensor:
    r"""Knowledge-distillation loss :math:`\alpha T^2\,\mathrm{KL}(p(v/T)\|p(z/T)) + (1-\alpha)\,\mathrm{CE}(z, y)`.

    KL and cross-entropy are means over the batch (module docstring for the derivation of :math:`T^2`); for
    sequence logits, over the tokens: ``B × L × V`` logits with ``B × L`` targets give exactly the loss of the
    flattened ``(B·L) × V`` logits and ``B·L`` targets, as language models are distilled (Sanh et al. 2019,
    DistilBERT; Gu et al. 2024, MiniLLM).

    Parameters
    ----------
    student_logits, teacher_logits : torch.Tensor
        ``N × K`` class scores, or ``B × L × V`` per-token logits, of the same shape, on one device. Gradients flow
        into ``student_logits`` only (the teacher's are detached).
    targets : torch.Tensor or None
        Integer labels in ``[0, K)``, of shape ``N`` (or ``B × L``). ``None`` (unlabelled transfer data): the soft
        term alone, :math:`T^2\,\mathrm{KL}` — the same as ``alpha=1``; ``alpha`` is then not used.
    T : float
        Temperature, ``> 0``.
    alpha : float
        Weight of the soft term, in ``[0, 1]``.
    ignore_index : int
        A target equal to it (padding, a prompt token) is left out of both terms, as ``F.cross_entropy`` leaves it
        out of its mean: the loss is the mean over the other rows (tokens).

    Returns
    -------
    torch.Tensor
        A scalar in the dtype of ``student_logits`` (float16/bfloat16 are computed in float32).
    """
    z = _check_logits(student_logits, "student_logits")
    v = _check_logits(teacher_logits, "teacher_logits")
    if z.shape != v.shape:
        raise ValueError(f"student_logits and teacher_logits must have the same shape, got {tuple(z.shape)} and "
                         f"{tuple(v.shape)}")
    if z.device != v.device:
        raise ValueError(f"student_logits is on {z.device} but teacher_logits on {v.device}: use one device")
    T, alpha = check_temperature(T), check_alpha(alpha)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__} ({ignore_index!r})")
    k = z.shape[-1]
    if z.ndim == 3:  # tokens as rows; N × K logits go on untouched
        z, v = z.reshape(-1, k), v.reshape(-1, k)
    if targets is None:
        return _kd_rows(z, v, None, T, alpha)
    y = _check_targets(targets, tuple(student_logits.shape[:-1]), k, ignore_index).reshape(-1).to(z.device)
    keep = y != ignore_index
    if not bool(keep.all()):  # only then select rows, so that a loss without ignored targets is the plain one
        z, v, y = z[keep], v[keep], y[keep]
    return _kd_rows(z, v, y, T, alpha)


def _shape(x: object, name: str) -> tuple[int, ...]:
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    if isinstance(x, Sequence) and not isinstance(x, str) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in x):
        return tuple(x)
    raise TypeError(f"{name} must be a tensor or a shape (a sequence of positive ints), got {x!r}")


def hint_regressor(student_shape: torch.Tensor | Sequence[int], teacher_shape: torch.Tensor | Sequence[int]
                   ) -> nn.Module:
    """The FitNets regressor from a student layer's output to a teacher layer's (untrained, default init).

    Parameters
    ----------
    student_shape, teacher_shape : torch.Tensor or sequence of int
        Shapes (or example outputs) ``N × D`` (a ``nn.Linear(D_s, D_t)`` is returned) or ``N × C × H × W``
        (a ``nn.Conv2d(C_s, C_t, (H_s - H_t + 1, W_s - W_t + 1))``, which maps the student's map onto the
        teacher's spatial size; ``1 × 1`` when the sizes agree). The batch size is not used.

    Raises
    ------
    ValueError
        For other numbers of dimensions, or a student map smaller than the teacher's.
    """
    s, t = _shape(student_shape, "student_shape"), _shape(teacher_shape, "teacher_shape")
    if len(s) != len(t) or len(s) not in (2, 4):
        raise ValueError("hint_regressor maps N × D to N × D' (linear) or N × C × H × W to N × C' × H' × W' "
                         f"(convolution), got student_shape {s} and teacher_shape {t}")
    if len(s) == 2:
        return nn.Linear(s[1], t[1])
    kh, kw = s[2] - t[2] + 1, s[3] - t[3] + 1
    if kh < 1 or kw < 1:
        raise ValueError(f"the student's feature map {s[2]}×{s[3]} is smaller than the teacher's {t[2]}×{t[3]}: "
                         "a convolutional regressor can only shrink it; choose an earlier student layer or a later "
                         "teacher layer")
    return nn.Conv2d(s[1], t[1], (kh, kw))


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, regressor: nn.Module | None = None
              ) -> torch.Tensor:
    r"""FitNets hint loss :math:`\frac1N \sum_n \tfrac12 \|u_h(x_n) - r(v_g(x_n))\|^2`.

    Parameters
    ----------
    student_feature : torch.Tensor
        The guided layer's output :math:`v_g`, ``N × ...``.
    teacher_feature : torch.Tensor
        The hint layer's output :math:`u_h` (detached: the teacher is not trained).
    regressor : nn.Module, optional
        :math:`r` (e.g. from :func:`hint_regressor`); ``None`` is the identity, for features of equal shape.

    Returns
    -------
    torch.Tensor
        A scalar: the squared error summed over each sample's features, halved, averaged over the batch.
    """
    s = check_tensor(student_feature, "student_feature", min_ndim=2, floating=True)
    t = check_tensor(teacher_feature, "teacher_feature", min_ndim=2, floating=True)
    if regressor is not None and not isinstance(regressor, nn.Module):
        raise TypeError(f"regressor must be an nn.Module or None, got {type(regressor).__name__}")
    r = s if regressor is None else regressor(s)
    if r.shape != t.shape:
        how = "the regressor's output" if regressor is not None else "student_feature (no regressor)"
        raise ValueError(f"{how} has shape {tuple(r.shape)} but teacher_feature has {tuple(t.shape)}; build a "
                         "regressor with hint_regressor(student_feature, teacher_feature)")
    diff = t.detach().to(r.dtype) - r
    return 0.5 * diff.pow(2).sum() / r.shape[0]


def attention_map(feature: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    r"""Normalised spatial attention :math:`\mathrm{at}(A) = Q/\|Q\|_2`, :math:`Q = \sum_c |A_c|^p`, flattened.

    Parameters
    ----------
    feature : torch.Tensor
        ``N × C × ...`` (channels second, then one or more spatial dimensions).
    p : float
        Exponent, ``> 0``.

    Returns
    -------
    torch.Tensor
        ``N × (H W ...)``, each row of unit norm (a row of zeros stays zero).
    """
    a = check_tensor(feature, "feature", min_ndim=3, floating=True).abs()
    p = _check_real(p, "p")
    if p <= 0:
        raise ValueError(f"p must be > 0, got {p}")
    # at(cA) = at(A) for c > 0, so each sample is divided by its largest |A| first: |A|^p then neither overflows
    # (inf/inf = nan from |A| ~ 1e20 in float32) nor falls below F.normalize's eps (1e-12: activations ~ 1e-7 gave
    # rows of norm < 1), and the largest entry's Q is >= 1. The divisor is a constant for autograd: at is homogeneous
    # of degree 0, so its gradient is the same with or without it.
    top = a.detach().flatten(1).amax(1)
    top = torch.where(top > 0, top, torch.ones_like(top)).view(-1, *[1] * (a.ndim - 1))
    q = (a / top).pow(p).sum(1).flatten(1)
    return F.normalize(q, p=2.0, dim=1)


def attention_transfer_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor, *, p: float = 2.0,
                            beta: float = 1.0) -> torch.Tensor:
    r"""Attention transfer :math:`\tfrac\beta2 \frac1N \sum_n \|\mathrm{at}(A_S) - \mathrm{at}(A_T)\|_2` for one
    pair of layers (sum the pairs for several).

    Parameters
    ----------
    student_feature, teacher_feature : torch.Tensor
        ``N × C × H × W`` (or other spatial dimensions) maps with the same batch and spatial sizes; the channel
        counts may differ. The teacher's is detached.
    p : float
        Exponent of :func:`attention_map`.
    beta : float
        Weight :math:`\beta \ge 0`.
    """
    s = check_tensor(student_feature, "student_feature", min_ndim=3, floating=True)
    t = check_tensor(teacher_feature, "teacher_feature", min_ndim=3, floating=True)
    if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
        raise ValueError("student_feature and teacher_feature must have the same batch and spatial sizes (channels "
                         f"may differ), got shapes {tuple(s.shape)} and {tuple(t.shape)}")
    beta = _check_real(beta, "beta")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    diff = attention_map(s, p) - attention_map(t.detach().to(s.dtype), p)
    return 0.5 * beta * torch.linalg.vector_norm(diff, dim=1).mean()
