"""Criteria: OBD's saliency is the true loss increase on a quadratic, the Hessian diagonal matches autograd's
Hessian, layer-wise OBS re-fits in closed form and beats magnitude, activation statistics match a direct count."""

import pytest
import torch
import torch.nn.utils.prune as tprune
from helpers import randn
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from tensorcompress import pruning


def _quadratic(d, seed):
    """L(w) = ½ (w - w*)ᵀ A (w - w*) with a graded spectrum (1e-3 .. 1e3): w* is the minimum."""
    q, _ = torch.linalg.qr(randn((d, d), seed))
    a = q @ torch.diag(torch.logspace(-3, 3, d, dtype=torch.float64)) @ q.T
    w_star = randn((d,), seed + 1)
    return a, w_star


@given(d=st.integers(2, 12), seed=st.integers(0, 1000))
def test_obd_predicts_the_loss_increase_on_a_quadratic(d, seed):
    a, w_star = _quadratic(d, seed)
    w = w_star.clone().requires_grad_(True)

    def loss_fn(v=w):
        e = v - w_star
        return 0.5 * e @ a @ e

    s = pruning.obd_saliency(loss_fn, w, method="exact")
    for q in range(d):
        v = w_star.clone()
        v[q] = 0
        true = loss_fn(v) - loss_fn(w_star)
        assert abs(float(s[q] - true)) <= 1e-10 * max(1.0, float(true))


def test_hessian_diagonal_exact_and_hutchinson():
    torch.manual_seed(0)
    x, y = randn((40, 5), 1), randn((40, 3), 2)
    w = (0.3 * randn((3, 5), 3)).requires_grad_(True)

    def loss_fn():
        return torch.tanh(x @ w.T - y).pow(2).mean()

    full = torch.autograd.functional.hessian(lambda v: torch.tanh(x @ v.T - y).pow(2).mean(), w.detach())
    ref = full.reshape(15, 15).diagonal().reshape(3, 5)
    torch.testing.assert_close(pruning.hessian_diagonal(loss_fn, w, method="exact"), ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(pruning.hessian_diagonal(loss_fn, w), pruning.hessian_diagonal(loss_fn, w, method="exact"))
    est = pruning.hessian_diagonal(loss_fn, w, method="hutchinson", samples=4000,
                                   generator=torch.Generator().manual_seed(0))
    # Monte-Carlo: the error of each entry falls as 1/sqrt(S); off-diagonal mass here is a few times the diagonal
    assert float((est - ref).abs().max()) < 0.1 * float(ref.abs().max())
    with pytest.raises(ValueError, match="method must be"):
        pruning.hessian_diagonal(loss_fn, w, method="full")
    with pytest.raises(ValueError, match="param must require grad"):
        pruning.hessian_diagonal(loss_fn, w.detach())


def test_obs_single_weight_step_is_the_closed_form():
    x, w = randn((50, 6), 4), randn((1, 6), 5)
    new, mask = pruning.obs_prune(w, x, 1, damp=0.0)
    h = 2 * x.T @ x
    hinv = torch.linalg.inv(h)
    q = int(torch.argmin(w[0] ** 2 / hinv.diagonal()))
    assert mask[0, q] == 0 and int(mask.sum()) == 5
    expected = w[0] - w[0, q] / hinv[q, q] * hinv[:, q]  # Hassibi & Stork: δw = -(w_q/[H⁻¹]_qq) H⁻¹ e_q
    torch.testing.assert_close(new[0], expected, rtol=1e-10, atol=1e-12)
    assert new[0, q].abs() < 1e-12


@pytest.mark.parametrize("sparsity", [0.5, 0.8])
def test_obs_beats_magnitude_on_a_linear_target(sparsity, dtype):
    # correlated inputs of graded scales (0.1 .. 10): magnitude sees neither, OBS weighs each weight by its input
    # and re-fits the kept ones
    mix = randn((20, 20), 6) * 0.5 + torch.eye(20, dtype=torch.float64)
    x = (randn((400, 20), 7) @ mix * torch.logspace(-1, 1, 20, dtype=torch.float64)).to(dtype)
    w = randn((8, 20), 8).to(dtype)
    y = x @ w.T
    obs_w, mask = pruning.obs_prune(w, x, sparsity)
    mag_mask = tprune.l1_unstructured(_lin(w), "weight", sparsity).weight_mask
    assert int((mask == 0).sum()) == int((mag_mask == 0).sum()) == round(sparsity * w.numel())
    assert obs_w.dtype == dtype and torch.all(obs_w[mask == 0] == 0)
    err_obs = (x @ obs_w.T - y).norm() / y.norm()
    err_mag = (x @ (w * mag_mask).T - y).norm() / y.norm()
    assert err_obs < 0.7 * err_mag, (float(err_obs), float(err_mag))


def _lin(w):
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False).to(w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
    return lin


def test_obs_bad_input():
    with pytest.raises(ValueError, match="weight must be \\(out, in\\) and inputs \\(N, in\\)"):
        pruning.obs_prune(torch.randn(3, 4), torch.randn(10, 5), 0.5)
    with pytest.raises(ValueError, match=r"amount must be a fraction in \[0, 1\], got 2.0"):
        pruning.obs_prune(torch.randn(3, 4), torch.randn(10, 4), 2.0)
    with pytest.raises(ValueError, match="damp must be finite"):
        pruning.obs_prune(torch.randn(3, 4), torch.randn(10, 4), 0.5, damp=float("nan"))


def test_magnitude_ln_norm_taylor():
    w = randn((4, 3, 2), 9)
    assert torch.equal(pruning.magnitude(w), w.abs())
    for n, dim in [(1, 0), (2, 1), (float("inf"), 2)]:
        conv = nn.Conv1d(3, 4, 2, bias=False).double()
        with torch.no_grad():
            conv.weight.copy_(w)
        ref = tprune.ln_structured(conv, "weight", 1, n=n, dim=dim).weight_mask
        scores = pruning.ln_norm(w, n, dim)
        assert scores.shape == (w.shape[dim],)
        lowest = int(torch.argmin(scores))
        assert torch.all(ref.select(dim, lowest) == 0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        pruning.ln_norm(torch.randn(5), 2, 0)
    g = randn((4, 3, 2), 10)
    assert torch.equal(pruning.taylor(w, g), (w * g).abs())
    with pytest.raises(ValueError, match="grad must have the weight's shape"):
        pruning.taylor(w, g[0])
    with pytest.raises(TypeError, match="floating point"):
        pruning.magnitude(torch.ones(3, dtype=torch.int64))


def test_activation_mean_and_apoz():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    data = [torch.randn(5, 1, 6, 6) for _ in range(3)]
    net(data[0])
    stats = pruning.activation(net, net[0], [(x, 0) for x in data])
    a = torch.relu(torch.cat([net[0](x) for x in data]).detach())
    torch.testing.assert_close(stats.mean, a.mean((0, 2, 3)))
    torch.testing.assert_close(stats.apoz, (a == 0).float().mean((0, 2, 3)))
    raw = pruning.activation(net, net[0], torch.cat(data), nonlinearity=None)
    assert torch.all(raw.apoz == 0) and raw.mean.shape == (4,)
    with pytest.raises(ValueError, match="module must be a submodule"):
        pruning.activation(net, nn.ReLU(), data)


def test_activation_keeps_every_submodules_mode_and_reads_any_batches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).train()
    net[1].eval()  # a frozen BatchNorm inside a training model
    x = torch.randn(10, 6)
    stats = pruning.activation(net, net[1], torch.utils.data.TensorDataset(x, torch.zeros(10)))
    assert [m.training for m in net.modules()] == [True, True, False, True, True]
    torch.testing.assert_close(stats.mean, torch.relu(net[1](net[0](x))).detach().mean(0))
    with pytest.raises(ValueError, match=r"neurons of a Linear on \(batch, features\) inputs; this one gives an "
                                         r"output of shape \(2, 3, 4\)"):
        pruning.activation(net, net[0], torch.randn(2, 3, 6))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        pruning.activation("net", net[0], x)
