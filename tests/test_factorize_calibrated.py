"""tc.factorize with calibration data: activation-aware SVD against a hand transcription through the symmetric square
root, the theorem (never above plain SVD on its data), the isotropic case, the ranks' meaning, sequences, errors."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_model_unchanged, model_state, randn
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc


def correlated_inputs(n_tokens: int, n: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """Tokens (rows) with correlated features and a few outlier channels, as a language model's activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g, dtype=torch.float64) / n**0.5 + torch.eye(n, dtype=torch.float64)
    x = torch.randn(n_tokens, n, generator=g, dtype=torch.float64) @ mix
    x[:, torch.randperm(n, generator=g)[: max(1, n // 8)]] *= 20.0
    return x.to(dtype)


def linear(m: int, n: int, seed: int, dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n, m)).to(dtype)


def output_error(weight: torch.Tensor, dense: torch.Tensor, x: torch.Tensor) -> float:
    """‖(W − W_r) Xᵀ‖_F in float64, tokens as rows of ``x``."""
    return float(torch.linalg.matrix_norm((weight.double() - dense.double()) @ x.double().T))


def by_hand(weight: torch.Tensor, x: torch.Tensor, r: int) -> torch.Tensor:
    """W_r = [W G^{1/2}]_r G^{-1/2} with G = XᵀX + λI, λ = 0.01 mean diag, the symmetric root from an eigen-
    decomposition (any root gives the same minimiser of tr(Δ G Δᵀ); the library takes the Cholesky factor)."""
    w, x = weight.double(), x.double()
    gram = x.T @ x
    g = gram + 0.01 * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=torch.float64)
    lam, q = torch.linalg.eigh(g)
    root, inv_root = q @ torch.diag(lam.sqrt()) @ q.T, q @ torch.diag(lam.rsqrt()) @ q.T
    u, s, vh = torch.linalg.svd(w @ root, full_matrices=False)
    return (u[:, :r] * s[:r]) @ vh[:r] @ inv_root


def dense(layer: tc.LowRankLinear) -> torch.Tensor:
    return layer.to_dense().weight.detach()


@pytest.mark.parametrize("r", [1, 3, 7])
def test_factors_equal_the_whitened_svd_written_out_by_hand(r):
    model, x = linear(12, 10, 0), correlated_inputs(64, 10, 1)
    new, report = tc.factorize(model, x, rank=r)
    assert isinstance(new[0], tc.LowRankLinear) and report[0].rank == r
    torch.testing.assert_close(dense(new[0]), by_hand(model[0].weight.detach(), x, r), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(new[0].second.bias, model[0].bias)


@given(m=st.integers(2, 24), n=st.integers(2, 24), tokens=st.integers(1, 80), seed=st.integers(0, 2**16),
       data=st.data())
def test_output_error_on_the_calibration_data_never_above_plain_svd(m, n, tokens, seed, data):
    r = data.draw(st.integers(1, min(m, n)))
    model, x = linear(m, n, seed), correlated_inputs(tokens, n, seed + 1)
    aware, _ = tc.factorize(model, x, rank=r)
    plain, _ = tc.factorize(model, rank=r)
    w = model[0].weight.detach()
    e_aware, e_plain = output_error(w, dense(aware[0]), x), output_error(w, dense(plain[0]), x)
    assert e_aware <= e_plain * (1 + 1e-9) + 1e-9 * float(torch.linalg.matrix_norm(w @ x.T))


def test_output_error_is_markedly_lower_with_outlier_features():
    model, x = linear(32, 32, 2), correlated_inputs(256, 32, 3)
    w = model[0].weight.detach()
    aware, _ = tc.factorize(model, x, rank=8)
    plain, _ = tc.factorize(model, rank=8)
    assert output_error(w, dense(aware[0]), x) < 0.5 * output_error(w, dense(plain[0]), x)  # measured: 0.12


@pytest.mark.parametrize("c", [1.0, 37.5])
def test_isotropic_inputs_give_the_plain_svd(c):
    n, model = 10, linear(14, 10, 4)
    q, _ = torch.linalg.qr(randn((40, n), 5))  # orthonormal columns: XᵀX = c I
    x = c**0.5 * q
    torch.testing.assert_close(x.T @ x, c * torch.eye(n, dtype=torch.float64))
    for r in (1, 4, 10):
        aware, _ = tc.factorize(model, x, rank=r)
        plain, _ = tc.factorize(model, rank=r)
        torch.testing.assert_close(dense(aware[0]), dense(plain[0]), rtol=1e-10, atol=1e-12)


def test_rank_ratio_and_energy_keep_their_meaning():
    model, x = linear(20, 30, 6), correlated_inputs(100, 30, 7)
    _, aware = tc.factorize(model, x, ratio=0.3)
    _, plain = tc.factorize(model, ratio=0.3)
    assert aware[0].rank == plain[0].rank == int(0.3 * 20 * 30 / 50)
    assert tc.factorize(model, x, rank=1000)[1][0].rank == 20
    gram = x.T @ x
    s = torch.linalg.cholesky(gram + 0.01 * gram.diagonal().mean() * torch.eye(30, dtype=torch.float64))
    sigma = torch.linalg.svdvals(model[0].weight.detach() @ s)
    share = (sigma**2).cumsum(0) / (sigma**2).sum()
    for energy in (0.5, 0.9, 0.99):
        want = int((share < energy).sum()) + 1
        assert tc.factorize(model, x, energy=energy)[1][0].rank == want
    full, _ = tc.factorize(model, x, rank=20)  # full rank reproduces the layer
    torch.testing.assert_close(dense(full[0]), model[0].weight.detach(), rtol=1e-9, atol=1e-10)


def test_without_calibration_the_layer_is_bit_identical_to_the_plain_truncation():
    model = linear(12, 9, 8, torch.float32)
    new, _ = tc.factorize(model, rank=4)
    u, s, vh = torch.linalg.svd(model[0].weight.detach(), full_matrices=False)  # the computation as written before
    root = s[:4].sqrt()
    assert torch.equal(new[0].first.weight, root[:, None] * vh[:4])
    assert torch.equal(new[0].second.weight, u[:, :4] * root)


def test_sequence_inputs_batches_and_each_layer_of_a_transformer():
    torch.manual_seed(0)
    lm = tc.models.TinyGPT(11, d_model=64, n_layers=1, n_heads=2, context=8).double()
    tokens = torch.randint(0, 11, (6, 8), generator=torch.Generator().manual_seed(9))
    windows = torch.utils.data.TensorDataset(tokens, tokens)
    before = model_state(lm)
    new, report = tc.factorize(lm, torch.utils.data.DataLoader(windows, batch_size=4), rank=3, exclude="head")
    assert_model_unchanged(lm, before)
    one, _ = tc.factorize(lm, tokens, rank=3, exclude="head")  # one batch or two: the same sums
    names = [row.name for row in report]
    assert names == [f"blocks.0.{n}" for n in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2")]
    inputs = tc.surgery.capture_inputs(lm, tokens, names)
    for name in names:
        w, x = lm.get_submodule(name).weight.detach(), inputs[name].reshape(-1, inputs[name].shape[-1])
        aware = dense(new.get_submodule(name))
        torch.testing.assert_close(aware, dense(one.get_submodule(name)), rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(aware, by_hand(w, x, 3), rtol=1e-7, atol=1e-9)
        plain = dense(tc.LowRankLinear.from_linear(lm.get_submodule(name), 3))
        assert output_error(w, aware, x) <= output_error(w, plain, x) * (1 + 1e-9)
    assert new(tokens).shape == (6, 8, 11)


def test_follows_device_and_dtype(device, dtype):
    model, x = linear(16, 12, 10, dtype).to(device), correlated_inputs(50, 12, 11, dtype).to(device)
    new, _ = tc.factorize(model, x, rank=4)
    assert all(p.device == x.device and p.dtype == dtype for p in new.parameters())
    w = model[0].weight.detach()
    plain, _ = tc.factorize(model, rank=4)
    slack = 1e-4 if dtype == torch.float32 else 1e-9
    assert output_error(w, dense(new[0]), x) <= output_error(w, dense(plain[0]), x) * (1 + slack)
    torch.testing.assert_close(dense(new[0]).cpu().double(), by_hand(w.cpu(), x.cpu(), 4), rtol=slack,
                               atol=slack * float(w.abs().max()))


def test_zero_inputs_fall_back_to_the_plain_svd():
    model = linear(6, 5, 12)
    aware, _ = tc.factorize(model, torch.zeros(7, 5, dtype=torch.float64), rank=2)
    plain, _ = tc.factorize(model, rank=2)
    torch.testing.assert_close(dense(aware[0]), dense(plain[0]), rtol=0, atol=0)


def test_bad_calibration_is_refused():
    model, x = linear(6, 5, 13), correlated_inputs(10, 5, 14)
    with pytest.raises(ValueError, match="calibration is read by method='svd' only.*'tt'"):
        tc.factorize(model, x, method="tt", rank=2)
    with pytest.raises(ValueError, match="calibration does not match the model.*\\(10, 4\\)"):
        tc.factorize(model, x[:, :4], rank=2)
    with pytest.raises(ValueError, match="calibration is empty"):
        tc.factorize(model, [], rank=2)
    with pytest.raises(ValueError, match="calibration is empty"):
        tc.factorize(model, x[:0], rank=2)
    with pytest.raises(TypeError, match="data must be a tensor, a Dataset or an iterable"):
        tc.factorize(model, 3.0, rank=2)
    with pytest.raises(ValueError, match="include entries \\['nope'\\] match no"):
        tc.factorize(model, x, rank=2, include="nope")


def test_whitening_refuses_what_is_not_a_gram_matrix():
    from tensorcompress.layers.low_rank_linear import whitening

    with pytest.raises(ValueError, match="gram must be a 5 × 5"):
        whitening(torch.eye(4, dtype=torch.float64), 5)
    with pytest.raises(ValueError, match="not positive semi-definite"):
        whitening(-torch.eye(3, dtype=torch.float64) + torch.diag(torch.tensor([0.0, 0.0, 9.0], dtype=torch.float64)))
    with pytest.raises(TypeError, match="gram"):
        whitening(torch.eye(3, dtype=torch.int64))
    g = randn((6, 6), 15)
    g = g @ g.T
    s = whitening(g)
    torch.testing.assert_close(s @ s.T, g + 0.01 * g.diagonal().mean() * torch.eye(6, dtype=torch.float64))
    assert torch.equal(s, s.tril())
