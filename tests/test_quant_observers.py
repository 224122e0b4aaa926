"""Observers: min-max and moving average equal torch.ao's; percentile and MSE ranges checked against direct
computations; per-channel statistics, state_dict round trip and bad input."""

import pytest
import torch
from helpers import randn
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorcompress import quantization as Q

try:  # oracle only
    from torch.ao import quantization as ao
except ImportError:  # pragma: no cover
    ao = None
needs_ao = pytest.mark.skipif(ao is None, reason="torch.ao.quantization is gone: no observer oracle")


def _batches(n=4, shape=(16, 6)):
    return [randn(shape, seed, dtype=torch.float32) * (1 + seed) + 0.3 * seed for seed in range(n)]


def _ao_kwargs(symmetric, per_channel, bits=8):
    signed = symmetric
    qmin, qmax = Q.qrange(bits, signed=signed)
    scheme = {(False, False): torch.per_tensor_affine, (True, False): torch.per_tensor_symmetric,
              (False, True): torch.per_channel_affine, (True, True): torch.per_channel_symmetric}
    kw = dict(dtype=torch.qint8 if signed else torch.quint8, qscheme=scheme[symmetric, per_channel],
              quant_min=qmin, quant_max=qmax)
    if per_channel:
        kw["ch_axis"] = 1
    return kw


@needs_ao
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bits", [4, 8])
def test_minmax_and_moving_average_equal_torch_ao(symmetric, per_channel, bits):
    axis = 1 if per_channel else None
    kw = _ao_kwargs(symmetric, per_channel, bits)
    pairs = [
        (Q.MinMaxObserver(bits=bits, symmetric=symmetric, axis=axis),
         (ao.PerChannelMinMaxObserver if per_channel else ao.MinMaxObserver)(**kw)),
        (Q.MovingAverageMinMaxObserver(averaging_constant=0.3, bits=bits, symmetric=symmetric, axis=axis),
         (ao.MovingAveragePerChannelMinMaxObserver if per_channel else ao.MovingAverageMinMaxObserver)(
             averaging_constant=0.3, **kw)),
    ]
    for ours, ref in pairs:
        for x in _batches():
            ours.update(x)
            ref(x)
        s, z = ref.calculate_qparams()
        qp = ours.qparams()
        assert torch.equal(qp.scale.reshape(-1), s.reshape(-1)), type(ours).__name__
        assert torch.equal(qp.zero_point.reshape(-1).long(), z.reshape(-1).long())
        assert torch.equal(ours.min_val.reshape(-1), ref.min_val.reshape(-1))


def test_percentile_observer_matches_sorted_order_statistics():
    x = randn((10_000,), 0, dtype=torch.float32)
    ob = Q.PercentileObserver(percentile=99.0)
    ob.update(x)
    xs = x.sort().values
    assert float(ob.max_val) == float(xs[9899]) and float(ob.min_val) == float(xs[100])
    full = Q.PercentileObserver(percentile=100.0)
    full.update(x)
    assert float(full.max_val) == float(x.max()) and float(full.min_val) == float(x.min())
    # the mean over batches of the per-batch percentiles
    ob2 = Q.PercentileObserver(percentile=99.0)
    a, b = x[:5000], x[5000:] * 3
    ob2.update(a)
    ob2.update(b)
    ref = [Q.PercentileObserver(percentile=99.0) for _ in range(2)]
    ref[0].update(a)
    ref[1].update(b)
    assert torch.allclose(ob2.max_val, (ref[0].max_val + ref[1].max_val) / 2)


@pytest.mark.parametrize("bits", [2, 4])
def test_mse_observer_is_grid_argmin_and_beats_minmax_on_heavy_tails(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(20_000, generator=g)
    x = torch.cat([x, torch.tensor([40.0])])  # one outlier stretches the min-max range
    mse = Q.MSEObserver(bits=bits, symmetric=True, n_grid=50)
    mse.update(x)
    mm = Q.MinMaxObserver(bits=bits, symmetric=True)
    mm.update(x)

    def err(qp):
        return float((Q.fake_quantize(x, qp) - x).pow(2).mean())

    e_mse = err(mse.qparams())
    # brute force over the same grid
    m = float(x.abs().max())
    grid = [err(Q.qparams(-k / 50 * m, k / 50 * m, bits=bits, symmetric=True)) for k in range(1, 51)]
    assert e_mse == pytest.approx(min(grid), rel=1e-6)
    assert e_mse < 0.5 * err(mm.qparams())


def test_per_channel_statistics_and_device(device):
    x = randn((5, 3, 4), 1, device, torch.float64)
    ob = Q.MinMaxObserver(axis=1)
    ob.update(x)
    assert torch.equal(ob.min_val.cpu(), x.amin(dim=(0, 2)).float().cpu())
    qp = ob.qparams()
    assert qp.axis == 1 and qp.scale.shape == (3,)
    assert Q.fake_quantize(x, qp.to(device)).device == x.device


def test_state_dict_round_trip_per_channel():
    ob = Q.MSEObserver(axis=0, n_grid=10)
    ob.update(randn((4, 9), 2, dtype=torch.float32))
    fresh = Q.MSEObserver(axis=0, n_grid=10)
    fresh.load_state_dict(ob.state_dict())
    assert torch.equal(fresh.qparams().scale, ob.qparams().scale) and int(fresh.n_batches) == 1
    ob.reset()
    with pytest.raises(RuntimeError, match="has seen no data"):
        ob.qparams()


def test_observer_bad_input():
    with pytest.raises(ValueError, match="observer must be one of"):
        Q.make_observer("histogram")
    assert isinstance(Q.make_observer("mse", bits=4), Q.MSEObserver)
    with pytest.raises(ValueError, match="bits must be between 1 and 16, got 20"):
        Q.MinMaxObserver(bits=20)
    for bad in (float("inf"), -float("inf"), float("nan")):
        for make in (Q.MinMaxObserver, lambda: Q.MinMaxObserver(axis=0), Q.MovingAverageMinMaxObserver,
                     Q.PercentileObserver, Q.MSEObserver):
            ob = make()
            with pytest.raises(ValueError, match="x must be finite, but 1 of its 4 entries are NaN or Inf"):
                ob.update(torch.tensor([1.0, bad, 0.0, 2.0]))
            assert int(ob.n_batches) == 0  # nothing folded in
    with pytest.raises(ValueError, match="percentile must be in"):
        Q.PercentileObserver(percentile=30)
    with pytest.raises(ValueError, match=r"averaging_constant must be a fraction in \(0, 1\], got 0"):
        Q.MovingAverageMinMaxObserver(averaging_constant=0)
    ob = Q.MinMaxObserver(axis=1)
    ob.update(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="x has 4 channels along axis 1, the observer saw 3"):
        ob.update(torch.zeros(2, 4))


@pytest.mark.parametrize("make, arg", [
    (lambda v: Q.MovingAverageMinMaxObserver(averaging_constant=v), "averaging_constant"),
    (lambda v: Q.PercentileObserver(percentile=v), "percentile"),
    (lambda v: Q.MSEObserver(n_grid=v), "n_grid"),
])
@pytest.mark.parametrize("value", [True, "0.5", None])
def test_observer_options_of_a_wrong_type_are_type_errors(make, arg, value):
    """A bool is not a number here (``True`` would be a constant of 1), a string not a number at all."""
    with pytest.raises(TypeError, match=arg):
        make(value)


def test_observer_options_out_of_range_name_the_bounds():
    with pytest.raises(ValueError, match=r"percentile must be in \(50, 100\], got nan"):
        Q.PercentileObserver(percentile=float("nan"))
    with pytest.raises(ValueError, match="n_grid must be >= 1, got 0"):
        Q.MSEObserver(n_grid=0)
    with pytest.raises(ValueError, match="averaging_constant must be finite"):
        Q.MovingAverageMinMaxObserver(averaging_constant=float("inf"))


def _mse_range_expanded(obs, x):
    """The oracle: the MSE observer's batch range as written first — the rows copied once per candidate of a chunk
    of 10, fake-quantized by the library's per-channel ``fake_quantize``, the errors reduced 10 x rows at once."""
    rows = obs._flat(x)
    lo, hi = torch.aminmax(rows, dim=1)
    alphas = torch.arange(1, obs.n_grid + 1, dtype=torch.float32) / obs.n_grid
    errs = []
    for a in alphas.split(10):
        qp = Q.qparams((a[:, None] * lo).reshape(-1), (a[:, None] * hi).reshape(-1), bits=obs.bits,
                       symmetric=obs.symmetric, signed=obs.signed, narrow_range=obs.narrow_range, axis=0)
        expanded = rows.unsqueeze(0).expand(a.numel(), -1, -1).reshape(-1, rows.shape[1])
        errs.append((Q.fake_quantize(expanded, qp) - expanded).pow(2).mean(dim=1).reshape(a.numel(), -1))
    a = alphas[torch.cat(errs).argmin(dim=0)]
    return a * lo, a * hi


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([2, 4, 8]), st.booleans(), st.sampled_from([None, 0, 1]), st.sampled_from([1, 7, 10, 25, 100]),
       st.sampled_from(["normal", "heavy tails", "few values"]), st.integers(0, 2**31 - 1))
def test_mse_observer_ranges_equal_the_expanded_computation(bits, symmetric, axis, n_grid, values, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 5, 40, generator=g)
    if values == "heavy tails":
        x = x**3
    elif values == "few values":  # candidates with equal errors: the first (smallest) alpha must win in both
        x = torch.randint(-2, 3, x.shape, generator=g).float()
    obs = Q.MSEObserver(bits=bits, symmetric=symmetric, axis=axis, n_grid=n_grid)
    lo, hi = obs._batch_range(obs._flat(x))
    want_lo, want_hi = _mse_range_expanded(obs, x)
    assert torch.equal(lo, want_lo) and torch.equal(hi, want_hi)


@pytest.mark.parametrize("axis", [None, 1])
def test_minmax_batch_range_is_the_exact_minimum_and_maximum(axis):
    x = randn((64, 3, 8, 8), 0, dtype=torch.float32) ** 3
    obs = Q.MinMaxObserver(axis=axis)
    obs.update(x)
    dims = None if axis is None else (0, 2, 3)
    want_lo = x.min() if dims is None else x.amin(dim=dims)
    want_hi = x.max() if dims is None else x.amax(dim=dims)
    assert torch.equal(obs.min_val, want_lo) and torch.equal(obs.max_val, want_hi)
    assert obs.min_val.shape == (() if axis is None else (3,))
