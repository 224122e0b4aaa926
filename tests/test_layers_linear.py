"""LowRankLinear and TTLinear: exact at full rank, closed-form counts, Eckart–Young, TensorLy-Torch, errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import tensorcompress as tc
from tensorcompress.decompositions import tt_matrix
from tensorcompress.layers.tt_linear import factor_dimension

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def make_linear(n_in: int, n_out: int, bias: bool, device, dtype, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias).to(device=device, dtype=dtype)


@given(n_in=st.integers(1, 12), n_out=st.integers(1, 12), bias=st.booleans(), batch=st.integers(1, 4))
def test_low_rank_full_rank_reproduces(device, dtype, n_in, n_out, bias, batch):
    lin = make_linear(n_in, n_out, bias, device, dtype)
    x = torch.randn(batch, n_in, device=device, dtype=dtype)
    layer = tc.LowRankLinear.from_linear(lin, min(n_in, n_out))
    assert layer.first.weight.device == lin.weight.device and layer.first.weight.dtype == dtype
    assert tc.relative_error(lin(x), layer(x)).item() <= TOL[dtype]
    assert tc.relative_error(lin.weight, layer.to_dense().weight).item() <= TOL[dtype]
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
    assert tc.relative_error(lin(x), layer(x)).item() <= TOL[dtype]
    assert tc.relative_error(lin.weight, layer.to_dense().weight).item() <= TOL[dtype]
    r = layer.rank
    closed = sum(r[k] * m * n * r[k + 1] for k, (m, n) in enumerate(zip(out_modes, in_modes, strict=True)))
    assert layer.n_params == closed + (lin.out_features if bias else 0)


@pytest.mark.parametrize("order", ["left", "right"])
def test_tt_core_by_core_orders_never_form_weight_and_batch(monkeypatch, order):
    layer = tc.TTLinear((4, 7), (5, 6), 3, order=order)
    x = torch.randn(2, 53, 28)
    monkeypatch.setattr(tt_matrix, "_dense", lambda cores: pytest.fail("forward formed the full weight"))
    y = layer(x)
    assert y.shape == (2, 53, 30)
    monkeypatch.undo()
    torch.testing.assert_close(y, layer.to_dense()(x))


def test_tt_default_order_forms_weight_only_when_cheaper(monkeypatch):
    # (4, 7) -> (5, 6), rank 3: from the last core 1728 FLOPs a vector, forming W 5040 once then 1680 a vector, so
    # W is formed from a batch of 106 on (a tie at 105 goes to the cores)
    layer = tc.TTLinear((4, 7), (5, 6), 3)
    assert layer.order == "auto" and "order" not in repr(layer)
    assert tc.contraction_flops((5, 6), (4, 7), layer.rank, 1) == {"left": 2100, "right": 1728, "dense": 6720}
    assert tc.contraction_order((5, 6), (4, 7), layer.rank, 105) == "right"
    assert tc.contraction_order((5, 6), (4, 7), layer.rank, 106) == "dense"
    x = torch.randn(2, 53, 28)
    monkeypatch.setattr(tt_matrix, "_dense", lambda cores: pytest.fail("forward formed the full weight"))
    y = layer(x[:, :52])
    monkeypatch.undo()
    torch.testing.assert_close(y, layer.to_dense()(x[:, :52]))
    calls, dense = [], tt_matrix._dense
    monkeypatch.setattr(tt_matrix, "_dense", lambda cores: calls.append(len(cores)) or dense(cores))
    y = layer(x)
    assert calls == [2]  # formed once for the batch of 106
    torch.testing.assert_close(y, layer.to_dense()(x))


@given(pairs=st.lists(st.tuples(st.integers(2, 5), st.integers(2, 5)), min_size=1, max_size=4),
       rank=st.integers(2, 6), batch=st.integers(1, 300))
def test_tt_default_order_does_the_fewest_flops(pairs, rank, batch):
    # torch's FLOP counter (2 per multiply-add of each matrix product dispatched) is the independent count of what
    # the forward pass did: the least of contraction_flops' three counts, whatever the shape and the batch (sizes
    # from 2 up: einsum multiplies elementwise, uncounted, when a contracted size is 1)
    out_modes, in_modes = zip(*pairs, strict=True)
    layer = tc.TTLinear(in_modes, out_modes, rank, dtype=torch.float64)
    flops = tc.contraction_flops(out_modes, in_modes, layer.rank, batch)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer(torch.randn(batch, layer.in_features, dtype=torch.float64))
    assert counter.get_total_flops() == min(flops.values())
    assert flops[tc.contraction_order(out_modes, in_modes, layer.rank, batch)] == min(flops.values())


def test_tt_every_build_path_takes_the_default_order():
    lin = make_linear(24, 12, True, "cpu", torch.float32)
    assert tc.TTLinear.from_linear(lin, (4, 6), (3, 4), rank=2).order == "auto"
    assert tc.TTLinear.from_linear(lin, (4, 6), (3, 4), rank=2, order="right").order == "right"
    new, _ = tc.factorize(nn.Sequential(lin, nn.ReLU(), nn.Linear(12, 4)), method="tt", rank=2)
    assert [m.order for m in new.modules() if isinstance(m, tc.TTLinear)] == ["auto", "auto"]
    with pytest.raises(ValueError, match=r"order must be one of \('left', 'right', 'dense', 'auto'\), got 'up'"):
        tc.TTLinear.from_linear(lin, (4, 6), (3, 4), rank=2, order="up")


@pytest.mark.parametrize("order", ["left", "right", "dense", "auto"])
def test_tt_every_order_equals_the_dense_layer(order, dtype):
    # every order (a forced one, or the default's choice for this batch) against the dense product through the same
    # parameters, outputs and gradients to rounding
    torch.manual_seed(0)
    layer = tc.TTLinear((4, 3, 2), (2, 5, 3), [3, 4], order=order, dtype=dtype)
    x = torch.randn(7, 24, dtype=dtype, requires_grad=True)
    ref_layer = copy.deepcopy(layer)
    ref_layer.order = "dense"
    y, ref = layer(x), ref_layer(x)
    torch.testing.assert_close(y, ref, rtol=TOL[dtype], atol=TOL[dtype] * ref.abs().max().item())
    torch.testing.assert_close(ref, layer.to_dense()(x), rtol=TOL[dtype], atol=TOL[dtype] * ref.abs().max().item())
    grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *ref_layer.parameters()])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=TOL[dtype], atol=TOL[dtype] * b.abs().max().item())
    with pytest.raises(ValueError, match=r"order must be one of \('left', 'right', 'dense', 'auto'\), got 'up'"):
        tc.TTLinear((4, 3), (2, 5), 2, order="up")
    with pytest.raises(TypeError, match="order must be a str, got NoneType"):
        tc.TTLinear((4, 3), (2, 5), 2, order=None)


def test_tt_init_variance():
    torch.manual_seed(0)
    w = torch.stack([tc.TTLinear((8, 8), (8, 8), 4).to_dense().weight.detach() for _ in range(30)])
    assert math.isclose(float(w.var()), 1 / 64, rel_tol=0.15)


def test_tt_ranks_and_eps(dtype):
    lin = make_linear(64, 48, True, "cpu", dtype)
    layer = tc.TTLinear.from_linear(lin, (4, 4, 4), (4, 4, 3), rank=5)
    assert layer.rank == (1, 5, 5, 1)  # below the unfolding caps (16, 12): exactly the rank asked for
    assert tc.TTLinear.from_linear(lin, (4, 4, 4), (4, 4, 3), rank=100).rank == (1, 16, 12, 1)
    layer = tc.TTLinear.from_linear(lin, (4, 4, 4), (4, 4, 3), eps=0.3)
    assert tc.relative_error(lin.weight, layer.to_dense().weight).item() <= 0.3 + 1e-6


def test_against_tltorch_blocktt(dtype):
    tltorch = pytest.importorskip("tltorch")
    torch.manual_seed(0)
    ref = tltorch.FactorizedLinear(in_tensorized_features=(3, 4), out_tensorized_features=(5, 2),
                                   factorization="blocktt", rank=3, bias=True).to(dtype)
    with torch.no_grad():
        ref.bias.normal_()
    ours = tc.TTLinear((3, 4), (5, 2), rank=list(ref.weight.rank), dtype=dtype)
    with torch.no_grad():
        for p, c in zip(ours.cores, ref.weight.factors, strict=True):
            p.copy_(c)
        ours.bias.copy_(ref.bias)
    x = torch.randn(4, 12, dtype=dtype)
    assert tc.relative_error(ref(x), ours(x)).item() <= TOL[dtype]
    assert ours.n_params == sum(p.numel() for p in ref.parameters())


def test_state_dict_round_trip():
    lin = make_linear(12, 10, True, "cpu", torch.float32)
    x = torch.randn(2, 12)
    for layer, fresh in ((tc.LowRankLinear.from_linear(lin, 3), tc.LowRankLinear(12, 10, 3)),
                         (tc.TTLinear.from_linear(lin, (3, 4), (5, 2), rank=2), tc.TTLinear((3, 4), (5, 2), 2))):
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
    with pytest.raises(ValueError, match=r"rank with d \+ 1 = 3 entries .* must start and end with 1"):
        tc.TTLinear((2, 3), (2, 2), [2, 2, 2])
    with pytest.raises(ValueError, match="d - 1 = 1 inner ranks"):
        tc.TTLinear((2, 3), (2, 2), [2, 2])
    # the TT functions' rank rule on the merged modes (2*2, 2*3) = (4, 6): at most min(4, 6) = 4
    with pytest.raises(ValueError, match=r"rank\[0\]=9 exceeds what the unfolding allows .* allowed 1\.\.4"):
        tc.TTLinear((2, 3), (2, 2), [9])
    assert tc.TTLinear((2, 3), (2, 2), 9).rank == (1, 4, 1)
    with pytest.raises(TypeError, match="in_modes must be a non-empty sequence"):
        tc.TTLinear(6, (2, 2), 2)
    with pytest.raises(ValueError, match="must have 6 features in its last dimension"):
        tc.TTLinear((2, 3), (2, 2), 2)(torch.randn(2, 5))


HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("half", HALF, ids=str)
def test_half_precision_decomposed_in_float32(half):
    # the one dtype rule (tensorcompress._validation.compute_dtype): decompose in float32, build in the input's dtype
    lin = make_linear(12, 10, True, "cpu", torch.float32).to(half)
    ref = nn.Linear(12, 10).to(torch.float32)
    ref.load_state_dict({k: v.float() for k, v in lin.state_dict().items()})
    x = torch.randn(3, 12).to(half)
    for build in (lambda m: tc.LowRankLinear.from_linear(m, 4), lambda m: tc.LowRankLinear.from_linear(m, energy=0.9),
                  lambda m: tc.TTLinear.from_linear(m, (3, 4), (5, 2), rank=2)):
        layer, expected = build(lin), build(ref).to(half)
        assert all(p.dtype == half for p in layer.parameters())
        for p, q in zip(layer.parameters(), expected.parameters(), strict=True):
            assert torch.equal(p, q)
        assert layer(x).dtype == half
    exact = tc.LowRankLinear.from_linear(lin, 10)
    assert tc.relative_error(lin(x).float(), exact(x).float()).item() < (2e-3 if half == torch.float16 else 2e-2)


def test_bad_weights_get_clear_errors():
    lin = nn.Linear(4, 3)
    lin.weight = nn.Parameter(torch.ones(3, 4, dtype=torch.int64), requires_grad=False)
    for build in (lambda m: tc.LowRankLinear.from_linear(m, 2), lambda m: tc.TTLinear.from_linear(m, (2, 2), (3, 1))):
        with pytest.raises(TypeError, match="linear.weight must have a floating point dtype .* got torch.int64"):
            build(lin)
    with pytest.raises(TypeError, match="linear.weight must have a floating point dtype .* got torch.complex64"):
        tc.LowRankLinear.from_linear(nn.Linear(4, 3, dtype=torch.complex64), 2)
    with pytest.warns(UserWarning, match="zero-element"):
        empty = nn.Linear(0, 3)
    with pytest.raises(ValueError, match=r"linear.weight must not be empty, got shape \(3, 0\)"):
        tc.LowRankLinear.from_linear(empty, 1)
    with pytest.raises(ValueError, match=r"linear.weight must not be empty"):
        tc.TTLinear.from_linear(empty, (1,), (3,))
    nan = nn.Linear(4, 3)
    with torch.no_grad():
        nan.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="linear.weight must be finite, but 1 of its 12 entries are NaN or Inf"):
        tc.LowRankLinear.from_linear(nan, 2)


def test_tt_empty_batch():
    layer = tc.TTLinear((4, 7), (5, 6), 3)
    for shape in ((0, 28), (2, 0, 28)):
        x = torch.randn(*shape, requires_grad=True)
        y = layer(x)
        assert y.shape == (*shape[:-1], 30)
        y.sum().backward()
        assert x.grad.shape == x.shape
    assert layer(torch.randn(28)).shape == (30,)
    torch.testing.assert_close(layer(torch.ones(28)), layer.to_dense()(torch.ones(28)))
    with pytest.raises(ValueError, match="must have 28 features in its last dimension, got shape \\[\\]"):
        layer(torch.tensor(1.0))


def test_tt_forward_equals_library_product(dtype):
    # the layer's own (scriptable) contraction against tensorcompress.tt_matrix_vector_product and the dense product
    torch.manual_seed(0)
    layer = tc.TTLinear((4, 3, 2), (2, 5, 3), [3, 4], bias=False, dtype=dtype)
    x = torch.randn(7, 24, dtype=dtype)
    torch.testing.assert_close(layer(x), tc.tt_matrix_vector_product(layer.tt_matrix(), x), rtol=TOL[dtype], atol=0)
    torch.testing.assert_close(layer(x), x @ layer.tt_matrix().to_matrix().T, rtol=TOL[dtype] * 10, atol=TOL[dtype])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_equals_eager():
    torch.manual_seed(0)
    lin = nn.Linear(12, 10)
    x = torch.randn(4, 12)
    for layer in (tc.LowRankLinear.from_linear(lin, 3), tc.TTLinear.from_linear(lin, (3, 4), (5, 2), rank=2),
                  tc.TTLinear((3, 4), (5, 2), 2, bias=False), tc.TTLinear((3, 4), (5, 2), 2, order="left")):
        scripted = torch.jit.script(layer)
        assert torch.equal(scripted(x), layer(x))
        assert scripted(x[:0]).shape == (0, 10)


def test_rank_has_one_name():
    lin = make_linear(12, 10, True, "cpu", torch.float64)
    a = tc.TTLinear.from_linear(lin, (3, 4), (5, 2), rank=2)
    assert a.rank == (1, 2, 1) and not hasattr(a, "ranks")
    assert tc.TTLinear((3, 4), (5, 2), rank=[2]).rank == tc.TTLinear((3, 4), (5, 2), rank=2).rank
    assert tc.LowRankLinear.from_linear(lin, rank=3).rank == 3
    for call in (lambda: tc.TTLinear.from_linear(lin, (3, 4), (5, 2), ranks=2),
                 lambda: tc.TTLinear((3, 4), (5, 2), ranks=2)):  # the older name is gone
        with pytest.raises(TypeError, match="ranks"):
            call()
    with pytest.raises(TypeError, match="TTLinear needs rank="):
        tc.TTLinear((3, 4), (5, 2))


@pytest.mark.parametrize("scale", [1e-25, 1.0, 1e20])
def test_energy_rank_at_extreme_scales(scale):
    # a graded spectrum (sigma_i = 2^-i) at scales where sigma^2 under- or overflows float32: the same rank
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(24, 16, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    sigma = 2.0 ** -torch.arange(16, dtype=torch.float64)
    lin = nn.Linear(16, 24, bias=False)
    with torch.no_grad():
        lin.weight.copy_((u * sigma) @ v.T * scale)
    s2 = sigma**2
    for energy in (0.5, 0.9, 0.999):
        expected = int((torch.cumsum(s2, 0) < energy * s2.sum()).sum()) + 1
        assert tc.LowRankLinear.from_linear(lin, energy=energy).rank == expected
