"""CPConv2d and TuckerConv2d: exact at full rank over strides/paddings/dilations, closed-form counts,
TensorLy-Torch's FactorizedConv, errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


conv_args = st.fixed_dictionaries({
    "in_channels": st.integers(1, 5), "out_channels": st.integers(1, 5),
    "kernel_size": st.tuples(st.integers(1, 3), st.integers(1, 3)),
    "stride": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "padding": st.tuples(st.integers(0, 2), st.integers(0, 2)),
    "dilation": st.tuples(st.integers(1, 2), st.integers(1, 2)),
    "bias": st.booleans(),
})


def make(args, device, dtype, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(**args).to(device=device, dtype=dtype)
    x = torch.randn(1, args["in_channels"], 6, 7, device=device, dtype=dtype)
    return conv, x


@settings(max_examples=12)
@given(args=conv_args)
def test_cp_full_rank_reproduces(device, dtype, args):
    conv, x = make(args, device, dtype)
    exact = tc.cp_exact_rank(conv.weight.shape)
    layer = tc.CPConv2d.from_conv(conv, exact)
    assert layer.first.weight.device == conv.weight.device and layer.first.weight.dtype == dtype
    y = layer(x)
    assert y.shape == conv(x).shape
    assert tc.relative_error(conv(x), y).item() <= TOL[dtype]
    assert tc.relative_error(conv.weight, layer.to_dense().weight).item() <= TOL[dtype]
    t, s, kh, kw = conv.weight.shape
    assert layer.n_params == exact * (s + kh + kw + t) + (t if args["bias"] else 0)


@settings(max_examples=12)
@given(args=conv_args)
def test_tucker_full_rank_reproduces(device, dtype, args):
    conv, x = make(args, device, dtype)
    layer = tc.TuckerConv2d.from_conv(conv, (args["out_channels"], args["in_channels"]))
    assert layer.core.weight.device == conv.weight.device and layer.core.weight.dtype == dtype
    assert tc.relative_error(conv(x), layer(x)).item() <= TOL[dtype]
    assert tc.relative_error(conv.weight, layer.to_dense().weight).item() <= TOL[dtype]


def test_tucker_counts_and_hosvd_error(dtype):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 10, 3, padding=1).to(dtype)
    w = conv.weight.detach()
    for ranks in ((3, 4), (10, 2), (1, 12)):
        layer = tc.TuckerConv2d.from_conv(conv, ranks)
        r_t, r_s = ranks
        assert layer.n_params == 12 * r_s + r_t * r_s * 9 + r_t * 10 + 10
        # same kernel as a truncated ST-HOSVD on the channel modes (library reference)
        ref = tc.hosvd(w, [r_t, r_s, 3, 3]).to_tensor()
        assert tc.relative_error(ref, layer.to_dense().weight).item() <= TOL[dtype] * 10
        # against TensorLy's partial Tucker (HOOI on the two channel modes, an independent reference): truncated
        # HOSVD is quasi-optimal (error <= sqrt(2) x the best, de Lathauwer et al. 2000); on this random kernel it is
        # within 2 % of HOOI, and the same where one channel mode is kept whole (then the HOSVD is optimal)
        err, ref_err = tc.relative_error(w, layer.to_dense().weight).item(), partial_tucker_error(w, ranks)
        assert ref_err * (1 - 1e-5) <= err <= ref_err * (1 + 1e-5 if r_t == 10 or r_s == 12 else 1.02)


def partial_tucker_error(w: torch.Tensor, ranks) -> float:
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import partial_tucker

    x = w.detach().double().cpu().numpy()
    # NumPy back-end whatever another test (TensorLy-Torch sets "pytorch") left; TensorLy warns when a rank equals a
    # mode's size (its SVD is then capped)
    with tl.backend_context("numpy"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        (core, factors), _ = partial_tucker(x, rank=list(ranks), modes=[0, 1], init="svd", tol=1e-12, n_iter_max=200)
        approx = tl.tenalg.multi_mode_dot(core, factors, modes=[0, 1])
    return float(((x - approx) ** 2).sum() ** 0.5 / (x**2).sum() ** 0.5)


def test_cp_low_rank_recovers_cp_kernel():
    dtype = torch.float64
    g = torch.Generator().manual_seed(1)
    factors = [torch.randn(n, 3, generator=g, dtype=dtype) for n in (6, 5, 3, 3)]
    conv = nn.Conv2d(5, 6, 3, padding=1, bias=False).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(tc.cp_to_tensor(tc.CPTensor(torch.ones(3, dtype=dtype), factors)))
    layer = tc.CPConv2d.from_conv(conv, 3, n_iter_max=100, tol=1e-14)
    x = torch.randn(1, 5, 6, 6, dtype=dtype)
    assert tc.relative_error(conv(x), layer(x)).item() < 1e-3
    assert layer.n_params == 3 * (5 + 3 + 3 + 6)


def test_tucker_rank_selection():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 3).double()
    w = conv.weight.detach()
    layer = tc.TuckerConv2d.from_conv(conv, energy=0.7)
    for n, r in zip((0, 1), layer.rank, strict=True):
        s2 = torch.linalg.svdvals(tc.unfold(w, n)) ** 2
        assert s2[:r].sum() >= 0.7 * s2.sum() > s2[: r - 1].sum()
    layer = tc.TuckerConv2d.from_conv(conv, "vbmf")
    assert layer.rank == tuple(max(tc.evbmf(tc.unfold(w, n)).rank, 1) for n in (0, 1))


def test_against_tltorch_cp(dtype):
    tltorch = pytest.importorskip("tltorch")
    torch.manual_seed(0)
    ref = tltorch.FactorizedConv(4, 6, 3, order=2, rank=5, factorization="cp", implementation="factorized",
                                 stride=2, padding=1, bias=True, dtype=dtype)
    ref.weight.normal_(0, 0.3)
    with torch.no_grad():
        ref.bias.normal_()
    ours = tc.CPConv2d(4, 6, 3, 5, stride=2, padding=1, dtype=dtype)
    ours.set_factors(ref.weight.factors, ref.weight.weights)
    with torch.no_grad():
        ours.last.bias.copy_(ref.bias)
    x = torch.randn(2, 4, 9, 9, dtype=dtype)
    assert tc.relative_error(ref(x), ours(x)).item() <= TOL[dtype]
    # TensorLy-Torch also stores the R CP weights that CPConv2d absorbs into the last factor
    assert ours.n_params + 5 == sum(p.numel() for p in ref.parameters())


def test_against_tltorch_tucker(dtype):
    tltorch = pytest.importorskip("tltorch")
    torch.manual_seed(0)
    ref = tltorch.FactorizedConv(5, 6, 3, order=2, rank=(4, 2, 3, 3), factorization="tucker",
                                 implementation="factorized", padding=1, bias=True, dtype=dtype)
    ref.weight.normal_(0, 0.3)
    with torch.no_grad():
        ref.bias.normal_()
    ours = tc.TuckerConv2d(5, 6, 3, (4, 2), padding=1, dtype=dtype)
    core, (u_t, u_s, a_h, a_w) = ref.weight.core, ref.weight.factors
    with torch.no_grad():
        ours.core.weight.copy_(tc.multi_mode_dot(core, [a_h, a_w], modes=[2, 3]))
        ours.first.weight.copy_(u_s.T.reshape(2, 5, 1, 1))
        ours.last.weight.copy_(u_t.reshape(6, 4, 1, 1))
        ours.last.bias.copy_(ref.bias)
    x = torch.randn(2, 5, 8, 8, dtype=dtype)
    assert tc.relative_error(ref(x), ours(x)).item() <= TOL[dtype]
    # TensorLy-Torch additionally stores the two spatial factors (k x k each), which Tucker-2 absorbs into the core
    assert ours.n_params + 2 * 9 == sum(p.numel() for p in ref.parameters())


def test_state_dict_round_trip():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    for layer, fresh in ((tc.CPConv2d.from_conv(conv, 3), tc.CPConv2d(4, 6, 3, 3, padding=1)),
                         (tc.TuckerConv2d.from_conv(conv, (2, 3)), tc.TuckerConv2d(4, 6, 3, (2, 3), padding=1))):
        fresh.load_state_dict(layer.state_dict())
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)


def test_padding_same_and_valid():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    for pad in ("same", "valid"):
        conv = nn.Conv2d(3, 4, 3, padding=pad).double()
        assert tc.relative_error(conv(x), tc.CPConv2d.from_conv(conv, 100)(x)).item() < 1e-10
        assert tc.relative_error(conv(x), tc.TuckerConv2d.from_conv(conv, (4, 3))(x)).item() < 1e-10


def test_errors():
    with pytest.raises(ValueError, match="groups=2: only groups=1"):
        tc.CPConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), 2)
    with pytest.raises(ValueError, match="padding_mode='reflect': only 'zeros'"):
        tc.TuckerConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), (2, 2))
    with pytest.raises(ValueError, match="pads asymmetrically"):
        tc.CPConv2d.from_conv(nn.Conv2d(4, 4, 2, padding="same"), 2)
    with pytest.raises(TypeError, match="conv must be a torch.nn.Conv2d, got Linear"):
        tc.CPConv2d.from_conv(nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match=r"rank\[1\] \(r_in\)=5 is out of range: allowed 1\.\.4"):
        tc.TuckerConv2d.from_conv(nn.Conv2d(4, 4, 3), (2, 5))
    with pytest.raises(ValueError, match="rank must be .* 'vbmf'.*got 'svd'"):
        tc.TuckerConv2d.from_conv(nn.Conv2d(4, 4, 3), "svd")
    with pytest.raises(ValueError, match="exactly one of rank or energy"):
        tc.TuckerConv2d.from_conv(nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="rank=0 is out of range"):
        tc.CPConv2d.from_conv(nn.Conv2d(4, 4, 3), 0)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_decomposed_in_float32(half):
    # the one dtype rule (tensorcompress._validation.compute_dtype): decompose in float32, build in the input's dtype
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1).to(half)
    ref = nn.Conv2d(4, 6, 3, padding=1)
    ref.load_state_dict({k: v.float() for k, v in conv.state_dict().items()})
    x = torch.randn(1, 4, 6, 6).to(half)
    for build in (lambda m: tc.CPConv2d.from_conv(m, 3, n_iter_max=5), lambda m: tc.CPConv2d.from_conv(m, 100),
                  lambda m: tc.TuckerConv2d.from_conv(m, (3, 2)), lambda m: tc.TuckerConv2d.from_conv(m, energy=0.8)):
        layer, expected = build(conv), build(ref).to(half)
        assert all(p.dtype == half for p in layer.parameters())
        for p, q in zip(layer.parameters(), expected.parameters(), strict=True):
            assert torch.equal(p, q)
        assert layer(x).dtype == half
    assert tc.layers.tucker2_ranks(conv.weight.detach(), energy=0.8) == tc.layers.tucker2_ranks(ref.weight, energy=0.8)


def test_bad_kernels_get_clear_errors():
    conv = nn.Conv2d(4, 3, 3)
    conv.weight = nn.Parameter(torch.ones(3, 4, 3, 3, dtype=torch.int32), requires_grad=False)
    with pytest.raises(TypeError, match="conv.weight must have a floating point dtype .* got torch.int32"):
        tc.CPConv2d.from_conv(conv, 2)
    with pytest.warns(UserWarning, match="zero-element"):
        empty = nn.Conv2d(0, 4, 3)
    for build in (lambda: tc.CPConv2d.from_conv(empty, 2), lambda: tc.TuckerConv2d.from_conv(empty, (2, 1))):
        with pytest.raises(ValueError, match=r"conv.weight must not be empty, got shape \(4, 0, 3, 3\)"):
            build()
    inf = nn.Conv2d(2, 2, 1)
    with torch.no_grad():
        inf.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="conv.weight must be finite"):
        tc.TuckerConv2d.from_conv(inf, (1, 1))


@pytest.mark.parametrize("cls, rank", [(tc.CPConv2d, 2), (tc.TuckerConv2d, (2, 2))])
def test_constructor_arguments_checked(cls, rank):
    cases = [({"kernel_size": 0}, ValueError, r"kernel_size=0 is out of range: each entry must be >= 1"),
             ({"kernel_size": (3, 0)}, ValueError, r"kernel_size=\(3, 0\) is out of range"),
             ({"kernel_size": (3,)}, TypeError, r"kernel_size must be an int or a pair of ints, got \(3,\)"),
             ({"stride": 0}, ValueError, "stride=0 is out of range: each entry must be >= 1"),
             ({"padding": -1}, ValueError, "padding=-1 is out of range: each entry must be >= 0"),
             ({"dilation": (1, 0)}, ValueError, r"dilation=\(1, 0\) is out of range"),
             ({"in_channels": 0}, ValueError, "in_channels=0 is out of range: allowed >= 1"),
             ({"out_channels": True}, TypeError, "out_channels must be an int, got bool")]
    for change, error, message in cases:
        args = {"in_channels": 4, "out_channels": 5, "kernel_size": 3, **change}
        with pytest.raises(error, match=message):
            cls(args.pop("in_channels"), args.pop("out_channels"), args.pop("kernel_size"), rank, **args)
    layer = cls(4, 5, (1, 3), rank, padding=(0, 1))  # the smallest valid values pass
    assert layer(torch.randn(1, 4, 5, 5)).shape == (1, 5, 5, 5)


def test_tucker_rank_has_one_name():
    """The rank is ``rank`` (argument and attribute) and nothing else: the older ``ranks`` is gone."""
    conv = nn.Conv2d(4, 6, 3)
    assert tc.TuckerConv2d.from_conv(conv, rank=(2, 3)).rank == (2, 3) == tc.TuckerConv2d(4, 6, 3, rank=(2, 3)).rank
    assert not hasattr(tc.TuckerConv2d(4, 6, 3, (2, 3)), "ranks")
    for call in (lambda: tc.TuckerConv2d.from_conv(conv, ranks=(2, 3)), lambda: tc.TuckerConv2d(4, 6, 3, ranks=(2, 3)),
                 lambda: tc.layers.tucker2_ranks(conv.weight, ranks=(2, 3))):
        with pytest.raises(TypeError, match="ranks"):
            call()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_equals_eager():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    x = torch.randn(2, 4, 9, 9)
    for layer in (tc.CPConv2d.from_conv(conv, 3), tc.TuckerConv2d.from_conv(conv, (3, 2)),
                  tc.TuckerConv2d(4, 6, 3, (3, 2), bias=False)):
        assert torch.equal(torch.jit.script(layer)(x), layer(x))
