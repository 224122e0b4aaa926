"""Whole-model fake quantization: the copy quantizes what PyTorch's kernels would, calibration equals min-max on
the layer inputs, state survives state_dict, QAT trains through tc.fit, LSQ's gradient equals PyTorch's learnable
fake-quant, bad input is refused."""

import pytest
import torch
from helpers import assert_model_unchanged, conv_net, model_state, randn
from torch import nn

import tensorcompress as tc
from tensorcompress import quantization as Q


def _data(n=64, seed=1):
    return randn((n, 2, 6, 6), seed, dtype=torch.float32)


def test_input_untouched_and_report():
    net = conv_net()
    before = model_state(net)
    qm, report = Q.quantize_model(net, exclude="5")
    assert_model_unchanged(net, before)
    assert [r.name for r in report] == ["0", "3"]
    assert [r.type_before for r in report] == ["Conv2d", "Linear"]
    assert all(r.type_after == "QuantizedLayer" for r in report)
    assert isinstance(qm[5], nn.Linear) and isinstance(qm[0], Q.QuantizedLayer)
    keys = qm.state_dict().keys()
    assert "0.layer.parametrizations.weight.original" in keys and "0.input_quantizer.scale" in keys


def test_weights_and_activations_equal_pytorch_fake_quant():
    net = conv_net()
    x = _data()
    qm, _ = Q.quantize_model(net, weight_bits=4, act_bits=6)
    Q.calibrate(qm, x)
    # weights: symmetric narrow-range per-channel, scale max|w|/qmax, against PyTorch's per-channel kernel
    w = net[0].weight.detach()
    scale = (w.abs().amax(dim=(1, 2, 3)) / 7).float()
    ref_w = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros(4, dtype=torch.int32), 0, -7, 7)
    assert torch.equal(qm[0].layer.weight, ref_w)
    # activation quantizer of layer 3 sees the ReLU output: min-max of its inputs, affine unsigned (while
    # calibrating, activations pass unquantized and weights are already quantized)
    seen = torch.relu(nn.functional.conv2d(x, ref_w, net[0].bias))
    aq = qm[3].input_quantizer
    qp = Q.qparams(seen.min(), seen.max(), bits=6)
    assert torch.equal(aq.scale, qp.scale) and torch.equal(aq.zero_point, qp.zero_point)
    assert int(aq.zero_point) == 0  # post-ReLU range [0, max]
    # the whole forward equals a hand-built chain of PyTorch kernels
    def fq(t, q):
        return torch.fake_quantize_per_tensor_affine(t, float(q.scale), int(q.zero_point), q.qmin, q.qmax)
    a0 = fq(x, qm[0].input_quantizer.qparams())
    h = torch.relu(nn.functional.conv2d(a0, ref_w, net[0].bias)).flatten(1)
    w3 = net[3].weight.detach()
    ref_w3 = torch.fake_quantize_per_channel_affine(w3, (w3.abs().amax(1) / 7).float(),
                                                    torch.zeros(5, dtype=torch.int32), 0, -7, 7)
    h = torch.relu(nn.functional.linear(fq(h, aq.qparams()), ref_w3, net[3].bias))
    w5 = net[5].weight.detach()
    ref_w5 = torch.fake_quantize_per_channel_affine(w5, (w5.abs().amax(1) / 7).float(),
                                                    torch.zeros(3, dtype=torch.int32), 0, -7, 7)
    out = nn.functional.linear(fq(h, qm[5].input_quantizer.qparams()), ref_w5, net[5].bias)
    assert torch.equal(qm(x), out)


def test_state_dict_round_trip_and_device(device):
    net = conv_net().to(device)
    x = _data().to(device)
    qm, _ = Q.quantize_model(net, observer="mse", per_channel=False)
    Q.calibrate(qm, [x[:32], x[32:]])
    fresh, _ = Q.quantize_model(net, observer="mse", per_channel=False)
    fresh.load_state_dict(qm.state_dict())
    assert torch.equal(fresh(x), qm(x))
    assert qm(x).device == x.device


def test_uncalibrated_model_refuses_and_calibrate_restores_mode():
    qm, _ = Q.quantize_model(conv_net())
    with pytest.raises(RuntimeError, match="not calibrated: run tc.quantization.calibrate"):
        qm(_data())
    qm.train()
    Q.calibrate(qm, torch.utils.data.TensorDataset(_data(), torch.zeros(64, dtype=torch.long)), n_batches=1)
    assert qm.training
    assert int(qm[0].input_quantizer.observer.n_batches) == 1


def test_calibrate_gives_back_every_submodules_mode():
    """A training model holding a BatchNorm frozen in eval mode: both modes survive calibration, and the
    calibration pass itself ran in eval mode (the BatchNorm's running statistics did not move)."""
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    qm, _ = Q.quantize_model(net)
    qm.train()
    qm[1].eval()
    stats = qm[1].running_mean.clone()
    Q.calibrate(qm, [(_data(8), None), (_data(8, seed=2), None)])
    assert qm.training and qm[0].training and qm[4].training and not qm[1].training
    assert torch.equal(qm[1].running_mean, stats)
    qm[1].train()  # the other way round: a BatchNorm training inside an eval model
    qm.eval()
    qm[1].train()
    Q.calibrate(qm, _data(8))
    assert not qm.training and qm[1].training and torch.equal(qm[1].running_mean, stats)


def test_w8a8_lenet5_close_to_float_and_qat_trains():
    net = tc.models.pretrained("lenet5")  # shipped inside the package
    train, test = tc.data.load_mnist_sample()
    small = torch.utils.data.Subset(test, range(300))
    base = tc.evaluate(net, small).accuracy
    qm, _ = Q.quantize_model(net)
    Q.calibrate(qm, train, n_batches=2)
    assert abs(tc.evaluate(qm, small).accuracy - base) <= 0.01
    # QAT at 2-bit weights: a short fine-tune with tc.fit moves the float weights and lowers the training loss
    q2, _ = Q.quantize_model(net, weight_bits=2, act_bits=4)
    Q.calibrate(q2, train, n_batches=2)
    sub = torch.utils.data.Subset(train, range(256))
    before = tc.evaluate(q2, sub).loss
    w0 = q2.fc1.layer.parametrizations.weight.original.detach().clone()
    tc.fit(q2, sub, epochs=1, lr=1e-3, progress=False)
    assert not torch.equal(w0, q2.fc1.layer.parametrizations.weight.original)
    assert tc.evaluate(q2, sub).loss < before


def _band(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int, axis) -> torch.Tensor:
    """Where the unrounded code u = x/s + Z lies in the half-step bands [qmin - 1/2, qmin] or [qmax, qmax + 1/2]:
    rounding lands on the last code, PyTorch's learnable kernel calls the value inside the range and Esser et
    al.'s eq. 3 (the library) calls it clipped."""
    shape = [1] * x.ndim
    if axis is not None:
        shape[axis] = -1
    u = x * (1.0 / scale).reshape(shape) + zp.float().reshape(shape)
    return ((u >= qmin - 0.5) & (u <= qmin)) | ((u >= qmax) & (u <= qmax + 0.5))


@pytest.mark.parametrize("axis", [None, 0])
def test_lsq_gradient_equals_pytorch_learnable_fake_quant_outside_the_band(axis):
    x = randn((6, 40), 3, dtype=torch.float32) * 2
    scale = torch.tensor(0.05) if axis is None else torch.linspace(0.02, 0.1, 6)
    zp = torch.zeros_like(scale, dtype=torch.int32) + 3
    g = 1 / (240 * 7) ** 0.5
    x1, s1 = x.clone().requires_grad_(), scale.clone().requires_grad_()
    out = Q.lsq_fake_quantize(x1, s1, zp, -8, 7, axis=axis, grad_factor=g)
    x2, s2 = x.clone().requires_grad_(), scale.clone().requires_grad_()
    z2 = zp.float().requires_grad_()
    if axis is None:
        ref = torch._fake_quantize_learnable_per_tensor_affine(x2, s2.reshape(1), z2.reshape(1), -8, 7, g)
    else:
        ref = torch._fake_quantize_learnable_per_channel_affine(x2, s2, z2, axis, -8, 7, g)
    # PyTorch decides inside/clipped on the rounded code, eq. 3 on the unrounded one: they differ only in the
    # half-step bands next to the range (see test_lsq_step_gradient_in_the_band_is_eq3), so those entries get no
    # upstream gradient here and the comparison covers everything else
    band = _band(x, scale, zp, -8, 7, axis)
    assert 0 < int(band.sum()) < band.numel() // 4
    gy = randn((6, 40), 4, dtype=torch.float32) * ~band
    out.backward(gy)
    ref.backward(gy)
    assert torch.equal(out, ref)
    assert torch.equal(x1.grad, x2.grad)
    assert torch.allclose(s1.grad, s2.grad, rtol=1e-5, atol=1e-7)


def _fake_quant64(x: torch.Tensor, s: float, z: int, qmin: int, qmax: int) -> torch.Tensor:
    """s (clamp(round(x/s) + Z, qmin, qmax) - Z) in float64: the function whose derivatives eq. 3 gives."""
    return s * ((torch.round(x / s) + z).clamp(qmin, qmax) - z)


@pytest.mark.parametrize("z", [0, 3])
def test_lsq_step_gradient_in_the_band_is_eq3(z):
    """In the band Esser et al.'s eq. 3 gives the clip value (q_max - Z, q_min - Z) and x no gradient, as finite
    differences do; PyTorch's kernel gives round(v) - v (-0.3 at v = 127.3) and passes x's gradient."""
    qmin, qmax, s = -128, 127, 0.125  # a power of two: the exact bounds 127.0 and -128.0 are hit exactly
    u = torch.tensor([127.3, 127.0, 127.49, 126.6, 50.3, -128.2, -128.0, -128.45, -127.6, 200.0],
                     dtype=torch.float64)
    v = u - z  # the bands are where the code u = v + Z is next to [qmin, qmax]
    x = v * s
    eq3 = torch.where(v + z >= qmax, float(qmax - z), torch.where(v + z <= qmin, float(qmin - z),
                                                                  torch.round(v) - v))
    d_s, d_x = [], []
    for xi in x:
        xs = xi.clone().requires_grad_()
        step = torch.tensor(s, dtype=torch.float64, requires_grad=True)
        Q.lsq_fake_quantize(xs, step, torch.tensor(z, dtype=torch.int32), qmin, qmax).backward()
        d_s.append(float(step.grad))
        d_x.append(float(xs.grad))
    assert torch.allclose(torch.tensor(d_s, dtype=torch.float64), eq3, atol=1e-9)
    # where the value is clipped, eq. 3 is the derivative itself (inside, it is the straight-through estimate of
    # a staircase whose true derivative is round(v)): central differences agree, in the band too
    h = 1e-9
    fd = (_fake_quant64(x, s + h, z, qmin, qmax) - _fake_quant64(x, s - h, z, qmin, qmax)) / (2 * h)
    clipped = (u >= qmax) | (u <= qmin)
    assert int(clipped.sum()) == 7 and torch.allclose(fd[clipped], eq3[clipped], atol=1e-5)
    fd_x = (_fake_quant64(x + h, s, z, qmin, qmax) - _fake_quant64(x - h, s, z, qmin, qmax)) / (2 * h)
    open_band = (u > qmax) | (u < qmin)  # the exact bounds, where x's one-sided derivatives differ, aside
    assert torch.equal(torch.tensor(d_x, dtype=torch.float64)[open_band], fd_x[open_band])
    assert d_x[:2] == [0.0, 1.0] and d_s[0] == pytest.approx(qmax - z)
    # PyTorch's rule at v + Z = 127.3: the rounded code is inside, so round(v) - v and a passed gradient
    xs = x[:1].float().clone().requires_grad_()
    step = torch.tensor([s], requires_grad=True)
    torch._fake_quantize_learnable_per_tensor_affine(xs, step, torch.tensor([float(z)]), qmin, qmax, 1.0).backward()
    assert float(step.grad) == pytest.approx(-0.3, abs=1e-4) and float(xs.grad) == 1.0


def test_lsq_model_learns_its_steps():
    qm, report = Q.quantize_model(conv_net(), method="lsq", weight_bits=3, act_bits=3)
    Q.calibrate(qm, _data())
    wq = qm[0].layer.parametrizations.weight[0]
    assert isinstance(wq.scale, nn.Parameter) and isinstance(qm[0].input_quantizer.scale, nn.Parameter)
    s0 = wq.scale.detach().clone()
    qm(_data()).pow(2).sum().backward()
    assert wq.scale.grad is not None and qm[0].input_quantizer.scale.grad is not None
    torch.optim.SGD(qm.parameters(), lr=1e-3).step()
    assert not torch.equal(s0, wq.scale)


def test_quantize_model_bad_input():
    with pytest.raises(ValueError, match="observer must be one of"):
        Q.quantize_model(conv_net(), observer="histogram")
    with pytest.raises(ValueError, match="method must be one of"):
        Q.quantize_model(conv_net(), method="gptq")
    with pytest.raises(ValueError, match="weight_bits must be between 1 and 16, got 32"):
        Q.quantize_model(conv_net(), weight_bits=32)
    with pytest.raises(ValueError, match="quantize_model: nothing to act on, the model has no Conv2d/Linear module"):
        Q.quantize_model(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="quantize_model: nothing to act on"):
        Q.quantize_model(conv_net(), exclude="*")
    with pytest.raises(TypeError, match="batch_size must be an int"):
        Q.calibrate(Q.quantize_model(conv_net())[0], _data(), batch_size=2.0)
    with pytest.raises(ValueError, match="nothing would be quantized"):
        Q.quantize_model(conv_net(), weight_bits=None, act_bits=None)
    with pytest.raises(ValueError, match="no activation quantizers"):
        Q.calibrate(Q.quantize_model(conv_net(), act_bits=None)[0], _data())


def test_weight_qparams_follow_in_place_updates():
    """The cached weight parameters are recomputed after an in-place change (an optimizer step, load_state_dict)."""
    qm, _ = Q.quantize_model(conv_net(), act_bits=None)
    orig = qm[3].layer.parametrizations.weight.original
    before = qm[3].layer.weight.clone()
    with torch.no_grad():
        orig.mul_(3.0)
    after = qm[3].layer.weight
    assert torch.allclose(after, 3 * before, rtol=1e-6)  # scale followed: same codes, 3x the step
    w = orig.detach()
    ref = torch.fake_quantize_per_channel_affine(w, (w.abs().amax(1) / 127).float(),
                                                 torch.zeros(5, dtype=torch.int32), 0, -127, 127)
    assert torch.equal(after, ref)
