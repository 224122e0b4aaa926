"""LowRankLinear and TTLinear: exact at full rank, closed-form counts, Eckart–Young, TensorLy-Torch, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc
from tensorcompress.layers.tt_linear import factor_dimension

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def make_linear(n_in: int, n_out: int, bias: bool, device, dtype, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias).to(device=device, dtype=dtype)


@given(n_in=st.integers(1, 12), n_out=st.integers(1, 12), bias=st.booleans(), batch=st.integers(1, 4))
def test_low_rank_full_rank_reproduces(device, dtype, n_in, n_out, bias, batch):
    lin = make_linear(n_in, n_out, bias, device, dtype)
    x = torch.randn(batch, n_in, device=device, dtype=dtype)
    layer = tc.LowRankLinear.from_linear(lin, min(n_in, n_out))
    assert layer.first.weight.device == lin.weight.device and layer.first.weight.dtype == dtype
    assert rel(layer(x), lin(x)) <= TOL[dtype]
    assert rel(layer.to_dense().weight, lin.weight) <= TOL[dtype]
    assert layer.n_params == min(n_in, n_out) * (n_in + n_out) + (n_out if bias else 0)


def test_low_rank_is_eckart_young(device, dtype):
    lin = make_linear(20, 15, True, device, dtype)
    s = torch.linalg.svdvals(lin.weight.detach().double())
    for r in (1, 4, 9):
        layer = tc.LowRankLinear.from_linear(lin, r)
        err = torch.linalg.matrix_norm(layer.to_dense().weight.detach().double() - lin.weight.detach().double())
        assert math.isclose(float(err), float(s[r:].square().sum().sqrt()), rel_tol=1e-4)
        # the sqrt(sigma) split: both factors carry the same singular values
        torch.testing.assert_close(torch.linalg.svdvals(layer.first.weight), torch.linalg.svdvals(layer.second.weight))


def test_low_rank_energy():
    lin = make_linear(30, 20, False, "cpu", torch.float64)
    s2 = torch.linalg.svdvals(lin.weight.detach()) ** 2
    layer = tc.LowRankLinear.from_linear(lin, energy=0.8)
    r = layer.rank
    assert s2[:r].sum() >= 0.8 * s2.sum() > s2[: r - 1].sum()


@given(in_modes=st.lists(st.integers(1, 4), min_size=1, max_size=3), data=st.data())
def test_tt_full_rank_reproduces(device, dtype, in_modes, data):
    out_modes = data.draw(st.lists(st.integers(1, 4), min_size=len(in_modes), max_size=len(in_modes)))
    bias = data.draw(st.booleans())
    lin = make_linear(math.prod(in_modes), math.prod(out_modes), bias, device, dtype)
    x = torch.randn(3, lin.in_features, device=device, dtype=dtype)
    layer = tc.TTLinear.from_linear(lin, in_modes, out_modes)
    assert layer.cores[0].device == lin.weight.device and layer.cores[0].dtype == dtype
    assert rel(layer(x), lin(x)) <= TOL[dtype]
    assert rel(layer.to_dense().weight, lin.weight) <= TOL[dtype]
    r = layer.ranks
    closed = sum(r[k] * m * n * r[k + 1] for k, (m, n) in enumerate(zip(out_modes, in_modes, strict=True)))
    assert layer.n_params == closed + (lin.out_features if bias else 0)


def test_tt_never_forms_weight_and_batches(monkeypatch):
    layer = tc.TTLinear((4, 7), (5, 6), 3)
    x = torch.randn(2, 5, 28)
    monkeypatch.setattr(tc.TTMatrix, "to_matrix", lambda self: pytest.fail("forward formed the full weight"))
    y = layer(x)
    assert y.shape == (2, 5, 30)
    monkeypatch.undo()
    torch.testing.assert_close(y, layer.to_dense()(x))


def test_tt_init_variance():
    torch.manual_seed(0)
    w = torch.stack([tc.TTLinear((8, 8), (8, 8), 4).to_dense().weight.detach() for _ in range(30)])
    assert math.isclose(float(w.var()), 1 / 64, rel_tol=0.15)


def test_tt_ranks_and_eps(dtype):
    lin = make_linear(64, 48, True, "cpu", dtype)
    layer = tc.TTLinear.from_linear(lin, (4, 4, 4), (4, 4, 3), ranks=5)
    assert max(layer.ranks) <= 5
    layer = tc.TTLinear.from_linear(lin, (4, 4, 4), (4, 4, 3), eps=0.3)
    assert rel(layer.to_dense().weight, lin.weight) <= 0.3 + 1e-6


def test_against_tltorch_blocktt(dtype):
    tltorch = pytest.importorskip("tltorch")
    torch.manual_seed(0)
    ref = tltorch.FactorizedLinear(in_tensorized_features=(3, 4), out_tensorized_features=(5, 2),
                                   factorization="blocktt", rank=3, bias=True).to(dtype)
    with torch.no_grad():
        ref.bias.normal_()
    ours = tc.TTLinear((3, 4), (5, 2), ranks=list(ref.weight.rank), dtype=dtype)
    with torch.no_grad():
        for p, c in zip(ours.cores, ref.weight.factors, strict=True):
            p.copy_(c)
        ours.bias.copy_(ref.bias)
    x = torch.randn(4, 12, dtype=dtype)
    assert rel(ours(x), ref(x)) <= TOL[dtype]
    assert ours.n_params == sum(p.numel() for p in ref.parameters())


def test_state_dict_round_trip():
    lin = make_linear(12, 10, True, "cpu", torch.float32)
    x = torch.randn(2, 12)
    for layer, fresh in ((tc.LowRankLinear.from_linear(lin, 3), tc.LowRankLinear(12, 10, 3)),
                         (tc.TTLinear.from_linear(lin, (3, 4), (5, 2), ranks=2), tc.TTLinear((3, 4), (5, 2), 2))):
        fresh.load_state_dict(layer.state_dict())
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


def test_factor_dimension():
    assert factor_dimension(784, 3) == (14, 8, 7)
    assert factor_dimension(300, 3) == (10, 6, 5)
    assert factor_dimension(7, 3) == (7, 1, 1)
    for n in (1, 60, 97, 1024):
        assert math.prod(factor_dimension(n, 4)) == n


def test_errors():
    lin = nn.Linear(6, 4)
    with pytest.raises(TypeError, match="linear must be a torch.nn.Linear, got Conv2d"):
        tc.LowRankLinear.from_linear(nn.Conv2d(1, 1, 1), 1)
    with pytest.raises(ValueError, match=r"rank=5 is out of range: allowed 1\.\.4"):
        tc.LowRankLinear.from_linear(lin, 5)
    with pytest.raises(ValueError, match="exactly one of rank or energy"):
        tc.LowRankLinear.from_linear(lin)
    with pytest.raises(ValueError, match=r"energy=1.5 is out of range"):
        tc.LowRankLinear.from_linear(lin, energy=1.5)
    with pytest.raises(ValueError, match=r"multiply to \(6, 6\) but linear has in_features=6, out_features=4"):
        tc.TTLinear.from_linear(lin, (2, 3), (2, 3))
    with pytest.raises(ValueError, match="same length"):
        tc.TTLinear((2, 3), (4,), 2)
    with pytest.raises(ValueError, match="d - 1 = 1 inner ranks"):
        tc.TTLinear((2, 3), (2, 2), [2, 2, 2])
    with pytest.raises(TypeError, match="in_modes must be a non-empty sequence"):
        tc.TTLinear(6, (2, 2), 2)
    with pytest.raises(ValueError, match="must have 6 features in its last dimension"):
        tc.TTLinear((2, 3), (2, 2), 2)(torch.randn(2, 5))
