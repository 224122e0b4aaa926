"""Integer-only inference: the multiplier decomposition, the rounding shift, and an integer LeNet-5 whose codes
equal the fake-quantized model's within 1 LSB, with int8 weights in its state (real bytes)."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorcompress as tc
from tensorcompress import quantization as Q


@given(st.floats(1e-12, 1e6, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_represents_m(m):
    m0, shift = Q.quantize_multiplier(m)
    assert 2**30 <= m0 < 2**31
    assert abs(m0 / 2**31 * 2.0**-shift - m) <= m * 2.0**-31


def test_quantize_multiplier_known_values_and_errors():
    assert Q.quantize_multiplier(0.5) == (2**30, 0)
    assert Q.quantize_multiplier(0.75) == (3 * 2**29, 0)
    assert Q.quantize_multiplier(0.1) == (round(0.8 * 2**31), 3)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="m must be a finite number > 0"):
            Q.quantize_multiplier(bad)


@given(st.integers(-(2**31), 2**31 - 1), st.floats(1e-6, 0.99))
def test_requantize_rounds_to_nearest(acc, m):
    m0, shift = Q.quantize_multiplier(m)
    out = int(Q.requantize(torch.tensor([acc], dtype=torch.int32), torch.tensor(m0), torch.tensor(shift)))
    exact = Fraction(acc * m0, 2 ** (31 + shift))
    assert out == math.floor(exact + Fraction(1, 2))  # nearest, ties toward +inf
    assert abs(out - acc * m) <= 0.5 + abs(acc) * m * 2.0**-30


@pytest.fixture(scope="module")
def lenet():
    net = tc.models.pretrained("lenet5")  # shipped inside the package
    train, test = tc.data.load_mnist_sample()
    qm, _ = Q.quantize_model(net)
    Q.calibrate(qm, train, n_batches=4)
    return net, qm, test


def test_integer_lenet5_codes_equal_fake_quantized_within_one_lsb(lenet):
    net, qm, test = lenet
    im = Q.to_integer(qm)
    x = test.tensors[0][:400]
    ours, ref = [], []
    for m in im.modules():
        if isinstance(m, Q.IntegerLayer):
            m.register_forward_pre_hook(lambda mod, a: ours.append(a[0]))
    for m in qm.modules():
        if isinstance(m, Q.ActivationQuantizer):
            m.register_forward_pre_hook(lambda mod, a: ref.append(Q.quantize(a[0], mod.qparams())))
    with torch.no_grad():
        out_int, out_fq = im(x), qm(x)
    assert len(ours) == len(ref) == 4
    ours[0] = Q.quantize(ours[0], qm.conv1.input_quantizer.qparams())  # the entry receives the float input
    n = same = 0
    for a, b in zip(ours, ref, strict=True):
        assert not a.is_floating_point() and a.dtype in (torch.int8, torch.uint8)
        d = (a.to(torch.int32) - b.to(torch.int32)).abs()
        assert int(d.max()) <= 1
        n, same = n + d.numel(), same + int((d == 0).sum())
    assert same / n >= 0.999
    assert (out_int.argmax(1) == out_fq.argmax(1)).float().mean() >= 0.995
    assert tc.evaluate(im, test).accuracy == pytest.approx(tc.evaluate(qm, test).accuracy, abs=0.003)


def test_integer_lenet5_state_is_int8_and_smaller(lenet):
    net, qm, _ = lenet
    im = Q.to_integer(qm)
    sd = im.state_dict()
    assert sd["conv1.weight"].dtype == torch.int8 and sd["fc1.bias"].dtype == torch.int32
    assert all(v.dtype != torch.float32 or v.numel() <= 10 for v in sd.values())
    assert tc.model_size_bytes(net) / tc.model_size_bytes(im) >= 3.9
    # the input model is untouched
    assert isinstance(qm.conv1, Q.QuantizedLayer)


def test_to_integer_refuses_what_it_cannot_do():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    with pytest.raises(ValueError, match="no quantized layers"):
        Q.to_integer(net)
    qm, _ = Q.quantize_model(net)
    with pytest.raises(ValueError, match="no calibrated input quantizer"):
        Q.to_integer(qm)
    qm, _ = Q.quantize_model(net, act_bits=12)
    Q.calibrate(qm, torch.randn(8, 4))
    with pytest.raises(ValueError, match="per-tensor activations of at most 8 bits"):
        Q.to_integer(qm)
    bn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    qm, _ = Q.quantize_model(bn)
    with pytest.raises(ValueError, match="BatchNorm"):
        Q.to_integer(qm)
