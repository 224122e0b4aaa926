r"""Rank selection by analytic empirical variational Bayesian matrix factorisation (EVBMF).

For an :math:`L \times M` matrix :math:`Y = U V^\top + E` (:math:`L \le M`, :math:`\alpha = L/M`, Gaussian noise of
variance :math:`\sigma^2`), the global EVB solution keeps exactly the singular components with

.. math:: \gamma_h > \underline\gamma^{\mathrm{EVB}} = \sigma \sqrt{M (1 + \bar\tau)(1 + \alpha/\bar\tau)},

where :math:`\bar\tau` is the unique zero of :math:`\Xi(\tau) = \Phi(\tau) + \Phi(\tau/\alpha)`,
:math:`\Phi(z) = \log(z + 1)/z - 1/2` (:math:`\bar\tau \approx 2.5129\sqrt\alpha`). When :math:`\sigma^2` is unknown
it is estimated by minimising the EVB free energy, a one-dimensional function of :math:`\sigma^2` in closed form
(:math:`x_h = \gamma_h^2/(M\sigma^2)`,
:math:`\tau(x) = \tfrac12(x - 1 - \alpha + \sqrt{(x - 1 - \alpha)^2 - 4\alpha})`):

.. math:: 2F/(LM) \doteq \sum_{x_h \le \bar x} (x_h - \log x_h)
          + \sum_{x_h > \bar x} \bigl(x_h - \tau_h + \log\tfrac{\tau_h + 1}{x_h}
          + \alpha \log(\tfrac{\tau_h}{\alpha} + 1)
          \bigr), \qquad \bar x = (1 + \bar\tau)(1 + \alpha/\bar\tau).

Nakajima, Sugiyama, Babacan & Tomioka (2013), "Global analytic solution of fully-observed variational Bayesian
matrix factorization", JMLR 14; used for the ranks of Tucker-2 convolutions by Kim et al. (2016), "Compression of
deep convolutional neural networks for fast and low power mobile applications", ICLR.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._validation import check_finite, compute_dtype

__all__ = ["VBMFResult", "evbmf", "evbmf_tau"]


class VBMFResult(NamedTuple):
    """``rank``: components kept; ``sigma2``: noise variance (estimated or given); ``threshold``: the singular value
    threshold :math:`\\underline\\gamma^{EVB}`; ``singular_values``: the EVB estimates of the kept components."""

    rank: int
    sigma2: float
    threshold: float
    singular_values: torch.Tensor


def evbmf_tau(alpha: float) -> float:
    r""":math:`\bar\tau(\alpha)`, the zero of :math:`\Phi(\tau) + \Phi(\tau/\alpha)` (bisection to machine
    precision; :math:`0 < \alpha \le 1`)."""
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")

    def xi(t: float) -> float:
        return math.log1p(t) / t + math.log1p(t / alpha) / (t / alpha) - 1.0

    lo, hi = 1e-12, 1e3  # xi is decreasing: xi(0+) = 1 > 0, xi(large) < 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if xi(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _free_energy(sigma2: torch.Tensor, s2: torch.Tensor, L: int, M: int, residual: float, xbar: float) -> torch.Tensor:
    """EVB free energy (up to constants, divided by LM/2) for each entry of ``sigma2``; vectorised."""
    alpha = L / M
    x = s2[None, :] / (M * sigma2[:, None])
    big = x > xbar
    xb = torch.where(big, x, torch.full_like(x, xbar + 1.0))
    tau = 0.5 * (xb - (1 + alpha) + torch.sqrt(((xb - (1 + alpha)) ** 2 - 4 * alpha).clamp_min(0)))
    small_terms = torch.where(big, 0.0, x - torch.log(x))
    big_terms = torch.where(big, xb - tau + torch.log((tau + 1) / xb) + alpha * torch.log(tau / alpha + 1), 0.0)
    h = s2.numel()
    return (small_terms + big_terms).sum(1) + residual / (M * sigma2) + (L - h) * torch.log(sigma2)


def evbmf(y: torch.Tensor, *, sigma2: float | None = None) -> VBMFResult:
    r"""Analytic empirical VBMF of a matrix (see the module docstring): the rank the EVB solution keeps.

    Parameters
    ----------
    y : torch.Tensor
        Floating point matrix (any floating dtype: the computation runs in float64), finite, not empty, not all
        zeros (transposed internally so that :math:`L \le M`).
    sigma2 : float, optional
        Known noise variance; by default estimated by minimising the free energy over
        :math:`[\sigma^2_{lo}, \|Y\|_F^2/(LM)]` (a log-spaced grid, then golden-section refinement).

    Returns
    -------
    VBMFResult
    """
    compute_dtype(y, "y")  # the library's dtype rule: floating only, not empty (EVBMF itself runs in float64)
    if y.ndim != 2:
        raise ValueError(f"y must be a matrix (2-D), got shape {tuple(y.shape)}")
    check_finite(y, "y")
    if y.shape[0] > y.shape[1]:
        y = y.T
    L, M = y.shape
    s = torch.linalg.svdvals(y.detach().double().cpu())
    total = float((y.detach().double() ** 2).sum())
    if total == 0:
        raise ValueError("y is all zeros: the noise variance and rank are undefined")
    alpha = L / M
    tau_bar = evbmf_tau(alpha)
    xbar = (1 + tau_bar) * (1 + alpha / tau_bar)
    residual = max(total - float((s**2).sum()), 0.0)  # 0 for a full SVD; kept for the general formula
    if sigma2 is None:
        s2 = s**2
        upper = total / (L * M)
        e_h = min(math.ceil(L / (1 + alpha)) - 1, L) - 1
        lower = max(float(s2[e_h + 1]) / (M * xbar), float(s2[e_h + 1:].mean()) / M) if e_h + 1 < L else upper / 1e6
        lower = max(min(lower, upper), upper * 1e-12)
        grid = torch.logspace(math.log10(lower), math.log10(upper), 400, dtype=torch.float64)
        f = _free_energy(grid, s2, L, M, residual, xbar)
        i = int(torch.argmin(f))
        a, b = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, len(grid) - 1)])
        g = (math.sqrt(5) - 1) / 2
        for _ in range(60):  # golden-section refinement on the bracket
            c, d = b - g * (b - a), a + g * (b - a)
            fc, fd = _free_energy(torch.tensor([c, d], dtype=torch.float64), s2, L, M, residual, xbar)
            if fc < fd:
                b = d
            else:
                a = c
        sigma2 = 0.5 * (a + b)
    elif isinstance(sigma2, bool) or not isinstance(sigma2, (int, float)) or not sigma2 > 0:
        raise ValueError(f"sigma2 must be a positive float or None, got {sigma2!r}")
    sigma2 = float(sigma2)
    threshold = math.sqrt(M * sigma2 * xbar)
    kept = s[s > threshold]
    q = 1 - (L + M) * sigma2 / kept**2
    estimates = kept / 2 * (q + torch.sqrt((q**2 - 4 * L * M * sigma2**2 / kept**4).clamp_min(0)))
    return VBMFResult(int(kept.numel()), sigma2, threshold, estimates.to(dtype=y.dtype))
