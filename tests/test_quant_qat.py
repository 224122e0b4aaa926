"""Quantization-aware training: LSQ's initial step equals Esser et al.'s formula, the gradient scales g = 1/√(N·Q_P)
of weight and activation steps equal PyTorch's learnable fake-quant with that factor, tc.fit trains every step and
weight of a fake-quantized model, and bad LSQ options are refused."""

import math

import numpy as np
import pytest
import torch
from helpers import conv_net, randn
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc
from tensorcompress import quantization as Q


def _data(n=64, seed=1):
    x = randn((n, 2, 6, 6), seed, dtype=torch.float32)
    y = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(seed))
    return torch.utils.data.TensorDataset(x, y)


@given(rows=st.integers(1, 6), cols=st.integers(1, 9), bits=st.integers(2, 8), seed=st.integers(0, 2**16))
def test_lsq_initial_step_is_twice_mean_abs_over_sqrt_qp(rows, cols, bits, seed):
    w = randn((rows, cols), seed) * 10.0 ** (seed % 5 - 2)  # scales 1e-2 .. 1e2
    qp = 2 ** (bits - 1) - 1
    ref = 2 * np.abs(w.numpy()).mean(axis=1) / math.sqrt(qp)
    np.testing.assert_allclose(Q.lsq_initial_step(w, qp, axis=0).numpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(float(Q.lsq_initial_step(w, qp)), 2 * np.abs(w.numpy()).mean() / math.sqrt(qp),
                               rtol=1e-6)
    assert Q.lsq_initial_step(w, qp, axis=0).dtype == torch.float32


def test_lsq_initial_step_device_zero_weight_and_bad_input(device, dtype):
    w = randn((3, 2, 2), 0, device=device, dtype=dtype)
    s = Q.lsq_initial_step(w, 7, axis=0)
    assert s.device == w.device and s.shape == (3,)
    assert torch.all(Q.lsq_initial_step(torch.zeros(2, 3, device=device, dtype=dtype), 1, axis=0) > 0)
    with pytest.raises(TypeError, match="w must be a torch.Tensor"):
        Q.lsq_initial_step([1.0, 2.0], 7)
    with pytest.raises(ValueError, match="qmax"):
        Q.lsq_initial_step(w, 0)


def test_quantize_model_lsq_init_mean_sets_every_weight_step():
    net = conv_net()
    qm, report = Q.quantize_model(net, method="lsq", lsq_init="mean", weight_bits=2, act_bits=4)
    for name in ("0", "3", "5"):
        w = net.get_submodule(name).weight.detach()
        wq = qm.get_submodule(name).layer.parametrizations.weight[0]
        ref = 2 * w.abs().flatten(1).mean(1) / math.sqrt(1)  # 2 bits, narrow range [-1, 1]: Q_P = 1
        assert torch.allclose(wq.scale.detach(), ref, rtol=1e-6)
        assert isinstance(wq.scale, nn.Parameter)
    assert all(r.detail["lsq_init"] == "mean" for r in report)
    # the observer's start (min-max: max|w| / Q_P) is the default, and clips nothing
    qo, _ = Q.quantize_model(net, method="lsq", weight_bits=2, act_bits=4)
    w0 = net[0].weight.detach()
    assert torch.equal(qo[0].layer.parametrizations.weight[0].scale.detach(), w0.abs().amax((1, 2, 3)).float())


def test_lsq_init_bad_options():
    with pytest.raises(ValueError, match="lsq_init must be one of"):
        Q.quantize_model(conv_net(), method="lsq", lsq_init="max")
    with pytest.raises(ValueError, match="needs method='lsq'"):
        Q.quantize_model(conv_net(), method="ptq", lsq_init="mean")


@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_step_gradient_is_pytorchs_with_gradient_scale(per_channel):
    net = conv_net()
    qm, _ = Q.quantize_model(net, method="lsq", weight_bits=3, act_bits=None, per_channel=per_channel)
    wq = qm[3].layer.parametrizations.weight[0]
    n_per_step = 64 if per_channel else 5 * 64
    assert wq.grad_factor == pytest.approx(1 / math.sqrt(n_per_step * 3))
    x = randn((16, 2, 6, 6), 5, dtype=torch.float32)
    qm(x).pow(2).sum().backward()
    # the same forward with PyTorch's learnable kernel on the layer's weight and the same upstream gradient
    w = net[3].weight.detach().clone().requires_grad_()
    s = wq.scale.detach().clone().requires_grad_()
    z = torch.zeros_like(s)
    if per_channel:
        wf = torch._fake_quantize_learnable_per_channel_affine(w, s, z, 0, -3, 3, wq.grad_factor)
    else:
        wf = torch._fake_quantize_learnable_per_tensor_affine(w, s.reshape(1), z.reshape(1), -3, 3, wq.grad_factor)
    # PyTorch's kernel decides inside/clipped on the rounded code, Esser et al.'s eq. 3 (the library) on the
    # unrounded one: in the half-step bands next to [-3, 3] (the observer puts each channel's largest weight on
    # the bound, up to the rounding of the reciprocal) the reference takes the library's own value, checked
    # against eq. 3 and finite differences in test_quant_model.test_lsq_step_gradient_in_the_band_is_eq3
    u = w.detach() * (1.0 / s.detach()).reshape(-1, 1)
    band = ((u >= -3.5) & (u <= -3)) | ((u >= 3) & (u <= 3.5))
    assert int(band.sum()) <= 5
    ours = Q.lsq_fake_quantize(w, s, z.int(), -3, 3, axis=0 if per_channel else None, grad_factor=wq.grad_factor)
    wf = torch.where(band, ours, wf)
    h = torch.relu(qm[0](x)).flatten(1).detach()
    out = qm[5](torch.relu(nn.functional.linear(h, wf, net[3].bias)))
    out.pow(2).sum().backward()
    assert torch.allclose(wq.scale.grad, s.grad.reshape(wq.scale.shape), rtol=1e-4, atol=1e-8)
    assert torch.allclose(qm[3].layer.parametrizations.weight.original.grad, w.grad, rtol=1e-5, atol=1e-7)


def test_activation_step_gradient_is_pytorchs_with_gradient_scale():
    qm, _ = Q.quantize_model(conv_net(), method="lsq", weight_bits=None, act_bits=3)
    x = _data().tensors[0]
    Q.calibrate(qm, x)
    aq = qm[3].input_quantizer
    h = torch.relu(qm[0](x)).flatten(1).detach()
    a = aq(h)
    # no upstream gradient in the half-step bands next to [0, 7], where PyTorch's kernel (rounded code) and eq. 3
    # (unrounded code; test_quant_model.test_lsq_step_gradient_in_the_band_is_eq3) differ by design: the
    # calibrated step puts the largest activation exactly on the bound
    u = h / aq.scale.detach() + aq.zero_point.float()
    band = ((u >= -0.5) & (u <= 0)) | ((u >= 7) & (u <= 7.5))
    assert int(((u >= 7) & (u <= 7.5)).sum()) >= 1
    gy = randn(a.shape, 7, dtype=torch.float32) * ~band
    a.backward(gy)
    g = 1 / math.sqrt(64 * 7)  # 64 features per sample, unsigned 3 bits: Q_P = 7
    s = aq.scale.detach().clone().reshape(1).requires_grad_()
    ref = torch._fake_quantize_learnable_per_tensor_affine(h, s, aq.zero_point.float().reshape(1), 0, 7, g)
    ref.backward(gy)
    assert torch.equal(a, ref)
    assert torch.allclose(aq.scale.grad.reshape(1), s.grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("method", ["ptq", "lsq"])
def test_fit_trains_weights_and_every_step(method):
    """QAT is `tc.fit` on the quantized model: the float weights move, LSQ's steps (weights' and activations')
    are parameters of the model, so the optimizer moves them too, and the training loss falls."""
    data = _data(128)
    qm, _ = Q.quantize_model(conv_net(), method=method, weight_bits=3, act_bits=3)
    Q.calibrate(qm, data)
    steps = [p for n, p in qm.named_parameters() if n.endswith("scale")]
    assert len(steps) == (6 if method == "lsq" else 0)
    before = [p.detach().clone() for p in qm.parameters()]
    loss0 = tc.evaluate(qm, data).loss
    tc.fit(qm, data, epochs=8, lr=0.05, optimizer="sgd", progress=False, seed=0)
    assert all(not torch.equal(b, p) for b, p in zip(before, qm.parameters(), strict=True))
    assert all(bool((p > 0).all()) for p in steps)
    assert tc.evaluate(qm, data).loss < loss0


def test_lsq_state_dict_round_trip():
    data = _data()
    qm, _ = Q.quantize_model(conv_net(), method="lsq", weight_bits=4, act_bits=4)
    Q.calibrate(qm, data)
    tc.fit(qm, data, epochs=1, lr=0.01, optimizer="sgd", progress=False, seed=0)
    fresh, _ = Q.quantize_model(conv_net(), method="lsq", weight_bits=4, act_bits=4)
    fresh.load_state_dict(qm.state_dict())
    x = data.tensors[0]
    with torch.no_grad():
        assert torch.equal(fresh(x), qm(x))
