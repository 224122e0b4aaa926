"""Half precision (tc.quantization.precision): unit roundoff, error bounds against measured errors, cast copies."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from helpers import assert_model_unchanged, model_state
from hypothesis import given
from torch import nn

import tensorcompress as tc
from tensorcompress.quantization import precision as P

HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dt", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_unit_roundoff_is_half_the_machine_epsilon(dt):
    assert P.unit_roundoff(dt) == torch.finfo(dt).eps / 2
    assert {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}.get(dt, P.unit_roundoff(dt)) == P.unit_roundoff(dt)


@given(st.floats(min_value=1e-3, max_value=6e4) | st.floats(min_value=-6e4, max_value=-1e-3),
       st.sampled_from(HALF))
def test_rounding_one_number_respects_u(x, dt):
    exact = torch.tensor(x, dtype=torch.float64)
    rounded = exact.to(dt).to(torch.float64)
    assert abs(float(rounded - exact)) <= P.unit_roundoff(dt) * abs(x)


def test_dot_error_bound_values_and_void_region():
    u = 2.0**-11
    assert P.dot_error_bound(10, torch.float16) == pytest.approx(10 * u / (1 - 10 * u), rel=1e-15)
    assert P.typical_dot_error(100, torch.bfloat16) == pytest.approx(10 * 2.0**-8)
    with pytest.raises(ValueError, match="void"):
        P.dot_error_bound(2048, torch.float16)
    with pytest.raises(ValueError, match="void"):
        P.dot_error_bound(256, torch.bfloat16)
    assert P.dot_error_bound(255, torch.bfloat16) < 1e6
    with pytest.raises(ValueError, match="n must be >= 1"):
        P.dot_error_bound(0, torch.float16)


@pytest.mark.parametrize("bad", ["float16", torch.int8, torch.float32, torch.complex64, 16])
def test_bad_dtypes_are_refused_with_a_clear_error(bad):
    model = nn.Linear(3, 2)
    error = TypeError if not isinstance(bad, torch.dtype) else ValueError
    with pytest.raises(error, match="dtype"):
        P.to_half(nn.Sequential(model), dtype=bad)
    with pytest.raises(error, match="dtype"):
        P.autocast(model, dtype=bad)
    with pytest.raises((TypeError, ValueError), match="dtype"):
        P.dot_error_bound(4, bad) if bad not in (torch.float32,) else P.layer_error_bound(model, torch.ones(1, 3), bad)


def test_not_a_module_is_refused():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        P.to_half(torch.ones(3), dtype=torch.float16)
    with pytest.raises(TypeError, match="takes 1 positional argument"):
        P.to_half(nn.Sequential(nn.Linear(3, 2)), torch.float16)  # dtype is keyword-only
    with pytest.raises(TypeError, match="takes 1 positional argument"):
        P.autocast(nn.Linear(3, 2), torch.float16)
    with pytest.raises(TypeError, match="layer must be"):
        P.layer_error_bound(nn.ReLU(), torch.ones(3), torch.float16)


def _half_output(layer: nn.Module, x: torch.Tensor, dt: torch.dtype) -> torch.Tensor:
    half, _ = P.to_half(nn.Sequential(layer), dtype=dt)
    with torch.no_grad():
        return half(x.to(dt)).to(torch.float64)


@given(st.integers(1, 250), st.integers(1, 8), st.integers(1, 5), st.booleans(), st.sampled_from(HALF),
       st.integers(0, 10_000), st.sampled_from([1e-3, 1.0, 1e3]))
def test_linear_error_within_the_componentwise_bound(k, out, batch, bias, dt, seed, scale):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(k, out, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out, k, generator=g))
        if bias:
            layer.bias.copy_(torch.randn(out, generator=g))
    x = torch.randn(batch, k, generator=g) * scale
    exact = nn.functional.linear(x.double(), layer.weight.double(), None if not bias else layer.bias.double())
    measured = (_half_output(layer, x, dt) - exact).abs()
    bound = P.layer_error_bound(layer, x, dt)
    assert bound.shape == exact.shape
    assert bool((measured <= bound).all()), float((measured / bound).max())


@given(st.integers(1, 6), st.integers(1, 6), st.sampled_from([1, 3]), st.integers(1, 2), st.integers(0, 1),
       st.sampled_from(HALF), st.integers(0, 10_000))
def test_conv_error_within_the_componentwise_bound(c_in, c_out, kernel, stride, padding, dt, seed):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(2, c_in, 7, 7, generator=g)
    exact = nn.functional.conv2d(x.double(), layer.weight.double(), layer.bias.double(), stride, padding)
    measured = (_half_output(layer, x, dt) - exact).abs()
    assert bool((measured <= P.layer_error_bound(layer, x, dt)).all())


def test_layer_bound_is_refused_where_void():
    with pytest.raises(ValueError, match="void"):
        P.layer_error_bound(nn.Linear(252, 2), torch.ones(1, 252), torch.bfloat16)
    assert P.layer_error_bound(nn.Linear(252, 2), torch.ones(1, 252), torch.float16).shape == (1, 2)


def test_the_bound_tells_the_formats_apart():
    # on short products (where the bound is tightest) bfloat16's error exceeds the float16 bound: not vacuous
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(2, 16, bias=False)
    x = torch.randn(32, 2, generator=g)
    exact = layer.double()(x.double()).detach()
    layer.float()
    measured = (_half_output(layer, x, torch.bfloat16) - exact).abs()
    assert bool((measured > P.layer_error_bound(layer, x, torch.float16)).any())


@pytest.mark.parametrize("dt", HALF)
def test_to_half_casts_a_copy_and_keeps_batchnorm_in_float32(dt, device):
    model = tc.models.pretrained("smallcnn").to(device).eval()
    before = model_state(model)
    half, report = P.to_half(model, dtype=dt)
    assert_model_unchanged(model, before)
    islands = [r for r in report if r.type_after == "Float32Island"]
    assert [r.name for r in islands] == ["features.0.1", "features.0.4", "features.1.1", "features.1.4"]
    assert all(r.detail == {"dtype": "torch.float32", "why": "keep_float32"} for r in islands)
    cast = [r for r in report if r.type_after != "Float32Island"]
    assert [r.name for r in cast] == ["features.0.0", "features.0.3", "features.1.0", "features.1.3", "classifier"]
    assert all(r.type_after == r.type_before and r.detail == {"dtype": str(dt)} for r in cast)
    assert all(r.params_after == r.params_before and 1.2 < r.compression < 2 for r in cast)  # 2 bytes a number
    for name, p in half.named_parameters():
        assert p.dtype == (torch.float32 if ".module." in name else dt), name
        assert p.device.type == device.type
    assert half.features[0][1].module.running_var.dtype == torch.float32
    x = tc.data.load_digits()[1].tensors[0][:64].to(device)
    with torch.no_grad():
        y, y32 = half(x.to(dt)), model(x)
    assert y.dtype == dt
    err = float(tc.relative_error(y32.double(), y.double()))
    assert 0 < err < 20 * P.unit_roundoff(dt)
    assert tc.model_size_bytes(half) < 0.55 * tc.model_size_bytes(model)


def test_to_half_keep_nothing_and_include():
    model = tc.models.pretrained("smallcnn").eval()
    everything, report = P.to_half(model, dtype=torch.bfloat16, keep_float32=())
    assert len(report) == 9 and all(p.dtype == torch.bfloat16 for p in everything.parameters())
    assert not any(isinstance(m, P.Float32Island) for m in everything.modules())
    # include picks what is cast; the rest stays float32 in islands, and the model still runs on half inputs
    some, report = P.to_half(model, dtype=torch.float16, include="features.1.*")
    assert [(r.name, r.detail.get("why")) for r in report if r.type_after == "Float32Island"] == [
        ("features.0.0", "not selected"), ("features.0.1", "not selected"), ("features.0.3", "not selected"),
        ("features.0.4", "not selected"), ("features.1.1", "keep_float32"), ("features.1.4", "keep_float32"),
        ("classifier", "not selected")]
    assert some.features[1][0].weight.dtype == torch.float16
    assert some.features[0][0].module.weight.dtype == torch.float32
    x = tc.data.load_digits()[1].tensors[0][:8]
    with torch.no_grad():
        assert some(x.half()).dtype == torch.float16
        assert float((some(x.half()).float() - model(x)).abs().max()) < 0.05
    with pytest.raises(ValueError, match="match no"):
        P.to_half(model, dtype=torch.float16, include="nope")
    with pytest.raises(ValueError, match="to_half: nothing to act on"):
        P.to_half(model, dtype=torch.float16, exclude="*")
    with pytest.raises(ValueError, match="to_half: nothing to act on, the model has no"):
        P.to_half(nn.Sequential(nn.ReLU()), dtype=torch.float16)
    with pytest.raises(TypeError, match="keep_float32"):
        P.to_half(model, dtype=torch.float16, keep_float32=nn.BatchNorm2d)


def test_to_half_refuses_a_tie_between_a_float32_island_and_a_cast_layer():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = shared.weight  # tied weights
    with pytest.raises(ValueError, match=r"module '2' stays float32 but shares parameters with \['0.weight'\]"):
        P.to_half(model, dtype=torch.float16, exclude="2")
    half, _ = P.to_half(model, dtype=torch.float16)  # both cast: the tie is kept
    assert half[0].weight is half[2].weight and half[0].weight.dtype == torch.float16


@pytest.mark.parametrize("dt", HALF)
def test_autocast_wrapper(dt):
    model = tc.models.pretrained("smallcnn").eval()
    wrapped = P.autocast(model, dtype=dt)
    assert wrapped.model is not model and wrapped.dtype == dt
    x = tc.data.load_digits()[1].tensors[0][:64]
    with torch.no_grad():
        y, y32 = wrapped(x), model(x)
    assert y.dtype == torch.float32
    err = float(tc.relative_error(y32.double(), y.double()))
    assert 0 < err < 20 * P.unit_roundoff(dt)
    assert all(p.dtype == torch.float32 for p in model.parameters())
