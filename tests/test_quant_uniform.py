"""Uniform quantization: bit-exact with PyTorch's fake-quant kernels (values and gradients, ties included), qparams
equal to torch.ao's MinMaxObserver, the rounding-noise statistics, and clear errors on bad input."""

import math

import pytest
import torch
from helpers import randn
from hypothesis import given
from hypothesis import strategies as st

from tensorcompress import quantization as Q

try:  # oracle only: torch.ao.quantization is being retired in favour of torchao
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver
except ImportError:  # pragma: no cover
    MinMaxObserver = PerChannelMinMaxObserver = None
needs_ao = pytest.mark.skipif(MinMaxObserver is None, reason="torch.ao.quantization is gone: no observer oracle")


@st.composite
def cases(draw, per_channel: bool):
    """A tensor with values on and around rounding ties, inside and outside the range, plus its QParams."""
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    qmin, qmax = Q.qrange(bits, signed=signed, narrow_range=draw(st.booleans()))
    n_ch = 1
    axis = None
    if per_channel:
        axis = draw(st.integers(-ndim, ndim - 1))
        n_ch = shape[axis]
    # powers of two make x * (1/S) exact, so (k + 1/2)·S is an exact tie; other scales test the float32 reciprocal
    exps = draw(st.lists(st.floats(-12, 6), min_size=n_ch, max_size=n_ch))
    pow2 = draw(st.booleans())
    scale = torch.tensor([2.0 ** round(e) if pow2 else 2.0**e for e in exps], dtype=torch.float32)
    zp = torch.tensor(draw(st.lists(st.integers(qmin, qmax), min_size=n_ch, max_size=n_ch)), dtype=torch.int32)
    if axis is None:
        scale, zp = scale[0], zp[0]
    seed = draw(st.integers(0, 2**16))
    return shape, scale, zp, qmin, qmax, axis, seed


def _values(shape, qp, seed, dtype):
    """Codes k drawn over [qmin - 3, qmax + 3]; values k·S, (k + 1/2)·S and their float neighbours."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(qp.qmin - 3, qp.qmax + 4, shape, generator=g).to(torch.float64)
    s = qp.scale.to(torch.float64)
    z = qp.zero_point.to(torch.float64)
    if qp.axis is not None:
        view = [1] * len(shape)
        view[qp.axis] = -1
        s, z = s.reshape(view), z.reshape(view)
    kind = torch.randint(0, 4, shape, generator=g)
    offset = torch.where(kind == 0, 0.0, torch.where(kind == 3, torch.rand(shape, generator=g, dtype=torch.float64),
                                                     0.5))
    x = ((k - z + offset) * s).to(dtype)
    nudge = torch.randint(-1, 2, shape, generator=g)
    return torch.where((kind == 2) & (nudge != 0), torch.nextafter(x, x + nudge.to(dtype)), x)


def _reference(x, qp):
    if qp.axis is None:
        return torch.fake_quantize_per_tensor_affine(x, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax)
    return torch.fake_quantize_per_channel_affine(x, qp.scale, qp.zero_point, qp.axis % x.ndim, qp.qmin, qp.qmax)


def _check_bit_exact(x, qp):
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    out, ref = Q.fake_quantize(x1, qp), _reference(x2, qp)
    assert out.dtype == ref.dtype == x.dtype
    assert torch.equal(out, ref), (out - ref).abs().max()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(x.dtype)
    out.backward(g)
    ref.backward(g)
    assert torch.equal(x1.grad, x2.grad)
    # dequantize(quantize(x)) is the same number
    assert torch.equal(Q.dequantize(Q.quantize(x, qp), qp, dtype=x.dtype), ref.detach())
    # without autograd (no straight-through mask made) the same numbers, and the input is never overwritten
    before = x.clone()
    with torch.no_grad():
        assert torch.equal(Q.fake_quantize(x, qp), ref.detach())
    with torch.inference_mode():
        assert torch.equal(Q.fake_quantize(x, qp), ref.detach())
        codes = Q.quantize(x, qp)
        assert torch.equal(Q.dequantize(codes, qp, dtype=x.dtype), ref.detach())
    assert torch.equal(x, before) and torch.equal(x1.detach(), before)


@given(cases(per_channel=False))
def test_fake_quantize_per_tensor_bit_exact(dtype, case):
    shape, scale, zp, qmin, qmax, axis, seed = case
    qp = Q.QParams(scale, zp, qmin, qmax, axis)
    _check_bit_exact(_values(shape, qp, seed, dtype), qp)


@given(cases(per_channel=True))
def test_fake_quantize_per_channel_bit_exact(dtype, case):
    shape, scale, zp, qmin, qmax, axis, seed = case
    qp = Q.QParams(scale, zp, qmin, qmax, axis)
    _check_bit_exact(_values(shape, qp, seed, dtype), qp)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_fake_quantize_half_bit_exact(half):
    for seed, (scale, zp, bits) in enumerate([(0.0123, 7, 8), (2.0**-6, 0, 4), (0.37, 3, 6)]):
        qp = Q.QParams(scale, zp, *Q.qrange(bits, signed=False))
        _check_bit_exact(_values((200,), qp, seed, half), qp)
    qp = Q.QParams(torch.tensor([0.01, 0.3, 2.0**-5]), torch.tensor([0, 5, 9], dtype=torch.int32), 0, 15, 1)
    _check_bit_exact(_values((7, 3), qp, 3, half), qp)


def test_ties_round_half_to_even():
    qp = Q.QParams(1.0, 0, -128, 127)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 126.5, 127.5, -128.5])
    assert Q.quantize(x, qp).tolist() == [0, 2, 2, 0, -2, 126, 127, -128]
    assert Q.quantize(x, qp).dtype == torch.int8


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*:UserWarning")
def test_quantize_matches_fake_quant_kernel_not_quantize_per_tensor_on_ties():
    """``quantize`` rounds x/S and then adds Z (the fake-quant kernels); ``torch.quantize_per_tensor`` rounds
    x/S + Z. Both round half to even, so on a tie with an odd zero point they are one code apart."""
    x = torch.tensor([1.25, 0.25, -0.25, 0.75, 2.25, 1.75, 0.3])  # x/S = 2.5, 0.5, -0.5, 1.5, 4.5, 3.5, 0.6
    for zp, per_tensor in ((1, [4, 2, 0, 2, 6, 4, 2]), (0, [2, 0, 0, 2, 4, 4, 1])):
        qp = Q.QParams(0.5, zp, 0, 255)
        ours = Q.quantize(x, qp).tolist()
        kernel = torch.fake_quantize_per_tensor_affine(x, 0.5, zp, 0, 255) / 0.5 + zp
        assert ours == kernel.tolist() == [zp + c for c in (2, 0, 0, 2, 4, 4, 1)]
        assert torch.quantize_per_tensor(x, 0.5, zp, torch.quint8).int_repr().tolist() == per_tensor


def test_float32_reciprocal_not_division():
    """An input where x * float32(1/S) and x / S round to different codes: the library follows the kernel."""
    scale = torch.tensor(0.1)
    inv = 1.0 / scale
    x = (torch.arange(-2000, 2000) + 0.5).float() * scale
    x = torch.cat([torch.nextafter(x, x - 1), x, torch.nextafter(x, x + 1)])  # on and beside the ties
    by_mul, by_div = torch.round(x * inv), torch.round(x / scale)
    differ = by_mul != by_div
    assert differ.any()  # the two conventions really do disagree somewhere
    qp = Q.QParams(scale, 0, *Q.qrange(16, signed=True))
    q = Q.quantize(x, qp).to(torch.int64)
    assert torch.equal(q, by_mul.long())


def test_ste_gradient_inside_and_zero_outside():
    qp = Q.qparams(-1.0, 1.0, bits=4, symmetric=True)
    x = torch.tensor([-5.0, -0.3, 0.0, 0.9, 5.0], requires_grad=True)
    Q.fake_quantize(x, qp).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_device_and_dtype_follow_input(device, dtype):
    x = randn((4, 3), 0, device, dtype)
    qp = Q.qparams(x.amin(0), x.amax(0), bits=6, axis=1).to(device)
    out = Q.fake_quantize(x, qp)
    assert out.device == x.device and out.dtype == dtype
    q = Q.quantize(x, qp)
    assert q.device == x.device and q.dtype == torch.int8  # [0, 63] fits int8
    assert Q.dequantize(q, qp, dtype=dtype).dtype == dtype


# ---------------------------------------------------------------------------------------------- qparams vs oracle
@needs_ao
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("shift", [0.0, 3.0, -3.0, 1e-9])
def test_qparams_equal_minmax_observer(bits, symmetric, shift):
    x = randn((64, 5), bits, dtype=torch.float32) * 2.0 + shift
    if shift == 1e-9:
        x = torch.zeros(64, 5)  # all zeros: the eps floor
    signed = symmetric
    qmin, qmax = Q.qrange(bits, signed=signed)
    kw = dict(dtype=torch.qint8 if signed else torch.quint8, quant_min=qmin, quant_max=qmax)
    ob = MinMaxObserver(qscheme=torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine, **kw)
    ob(x)
    s_ref, z_ref = ob.calculate_qparams()
    qp = Q.qparams(x.min(), x.max(), bits=bits, symmetric=symmetric)
    assert torch.equal(qp.scale.reshape(1), s_ref.reshape(1)) and int(qp.zero_point) == int(z_ref)
    pc = PerChannelMinMaxObserver(ch_axis=1, qscheme=torch.per_channel_symmetric if symmetric
                                  else torch.per_channel_affine, **kw)
    pc(x)
    s_ref, z_ref = pc.calculate_qparams()
    qp = Q.qparams(x.amin(0), x.amax(0), bits=bits, symmetric=symmetric, axis=1)
    assert torch.equal(qp.scale, s_ref) and torch.equal(qp.zero_point.long(), z_ref.long())


@needs_ao
def test_qparams_unsigned_symmetric_midpoint():
    x = randn((100,), 1, dtype=torch.float32)
    ob = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric)
    ob(x)
    s_ref, z_ref = ob.calculate_qparams()
    qp = Q.qparams(x.min(), x.max(), symmetric=True, signed=False)
    assert torch.equal(qp.scale.reshape(1), s_ref) and int(qp.zero_point) == int(z_ref) == 128


def test_range_contains_zero_and_zero_is_exact():
    qp = Q.qparams(2.0, 5.0, bits=8)  # positive-only range is widened to [0, 5]
    assert int(qp.zero_point) == 0
    qp = Q.qparams(-7.3, 2.1, bits=5)
    assert float(Q.fake_quantize(torch.zeros(3), qp).abs().max()) == 0.0


# ------------------------------------------------------------------------------------------------- rounding noise
@pytest.mark.parametrize("bits", [4, 8])
def test_rounding_noise_mean_and_variance(bits):
    """On x ~ U(lo, hi) spanning many steps, e = x̂ - x is ~U(-Δ/2, Δ/2): mean 0, variance Δ²/12.

    Tolerances from the sampling distribution of n = 200,000 draws: sd(mean) = Δ/√(12 n), and for the variance
    sd(s²) = √(Var(e²)/n) with Var(e²) = E e⁴ - (E e²)² = Δ⁴/80 - Δ⁴/144 = Δ⁴/180. Checked at 5 sd (a false
    alarm has probability < 1e-6)."""
    n = 200_000
    g = torch.Generator().manual_seed(bits)
    qp = Q.qparams(-1.0, 3.0, bits=bits)
    d = float(qp.scale)
    lo, hi = -1.0 + d, 3.0 - 2 * d  # stay off the clipping edges
    x = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    e = Q.fake_quantize(x, qp) - x
    assert abs(float(e.mean())) < 5 * d / math.sqrt(12 * n)
    assert abs(float(e.pow(2).mean()) - d * d / 12) < 5 * d * d / math.sqrt(180 * n)
    assert float(e.abs().max()) <= d / 2 * (1 + 1e-6)


@given(st.integers(1, 16), st.booleans(), st.integers(0, 1000))
def test_error_at_most_half_step_inside_range(bits, symmetric, seed):
    x = randn((50,), seed, dtype=torch.float32) * 10 ** (seed % 7 - 3)
    qp = Q.qparams(x.min(), x.max(), bits=bits, symmetric=symmetric)
    xh = Q.dequantize(Q.quantize(x, qp), qp)
    # codes qmin..qmax cover [S(qmin - Z - 1/2), S(qmax - Z + 1/2)] with error at most Δ/2
    lo = float(qp.scale) * (qp.qmin - int(qp.zero_point) - 0.5)
    hi = float(qp.scale) * (qp.qmax - int(qp.zero_point) + 0.5)
    inside = (x >= lo) & (x <= hi)
    # Δ/2 plus float32 rounding of x·(1/S) and of S·(q - Z)
    bound = float(qp.scale) / 2 + 4 * torch.finfo(torch.float32).eps * x.abs().max()
    assert bool(((xh - x).abs()[inside] <= bound).all())
    assert bool(inside.all())  # a min-max range covers every sample


# ---------------------------------------------------------------------------------------------------- bad input
def test_bad_input_errors():
    with pytest.raises(ValueError, match="bits must be between 1 and 16, got 17"):
        Q.qparams(-1.0, 1.0, bits=17)
    with pytest.raises(ValueError, match="bits must be between 1 and 16, got 0"):
        Q.qparams(-1.0, 1.0, bits=0)
    with pytest.raises(TypeError, match="bits must be an int"):
        Q.qparams(-1.0, 1.0, bits=8.0)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        Q.QParams(0.0, 0, 0, 255)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        Q.QParams(float("nan"), 0, 0, 255)
    with pytest.raises(ValueError, match=r"zero_point must lie in \[qmin, qmax\] = \[0, 255\], got \[256\]"):
        Q.QParams(0.1, 256, 0, 255)
    with pytest.raises(TypeError, match="zero_point must be an integer"):
        Q.QParams(0.1, 1.5, 0, 255)
    with pytest.raises(ValueError, match="x_max must be finite"):
        Q.qparams(-1.0, float("inf"))
    with pytest.raises(ValueError, match="x_min must be <= x_max"):
        Q.qparams(1.0, -1.0)
    with pytest.raises(ValueError, match="axis is required"):
        Q.qparams(torch.zeros(3), torch.ones(3))
    qp = Q.qparams(-1.0, 1.0)
    with pytest.raises(ValueError, match="x must be finite"):
        Q.fake_quantize(torch.tensor([0.0, float("nan")]), qp)
    with pytest.raises(TypeError, match="x must have a floating point dtype"):
        Q.quantize(torch.tensor([1, 2]), qp)
    with pytest.raises(TypeError, match="qp must be a QParams"):
        Q.fake_quantize(torch.zeros(2), (0.1, 0))
    pc = Q.qparams(torch.zeros(3) - 1, torch.ones(3), axis=0)
    with pytest.raises(ValueError, match="has 4 channels along axis 0 but qp has 3 scales"):
        Q.fake_quantize(torch.zeros(4, 2), pc)
    with pytest.raises(ValueError, match=r"q must lie in \[qmin, qmax\]"):
        Q.dequantize(torch.tensor([300], dtype=torch.int32), qp)
    with pytest.raises(ValueError, match="narrow_range needs bits >= 2"):
        Q.qrange(1, signed=True, narrow_range=True)
