"""Quantized residual additions and integer inference on branching graphs: ResNet-8 and MobileNetV2-tiny
quantized (a QuantizedAdd per tc.surgery.Add), calibrated and converted, every layer's and addition's integer codes
within one step of the fake-quantized model's and the class decisions equal; the addition against its formula by
hand; ReLU6 a clamp at the code of 6; an addition written with ``+`` reported and refused by name."""

import math
from fractions import Fraction

import pytest
import torch
from helpers import assert_model_unchanged, model_state
from torch import nn

import tensorcompress as tc
from tensorcompress import quantization as Q


def _random_statistics(net: nn.Module, seed: int) -> nn.Module:
    """BatchNorms that are not the identity (an untrained network's are), so that folding them changes numbers."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def mnist():
    train, test = tc.data.load_mnist_sample()
    return train, test.tensors[0][:500]


@pytest.fixture(scope="module", params=["ResNet8", "MobileNetV2Tiny"])
def converted(request, mnist):
    """(float model, its state before, calibrated fake-quantized copy, report, integer network, report)."""
    train, x = mnist
    torch.manual_seed(0)
    net = _random_statistics(getattr(tc.models, request.param)(), 1)
    before = model_state(net)
    qm, q_report = Q.quantize_model(net, x[:2])
    Q.calibrate(qm, train, n_batches=4)
    q_before = model_state(qm)
    im, i_report = Q.to_integer(qm, x[:2])
    assert_model_unchanged(qm, q_before)
    return net, before, qm, q_report, im, i_report


def _codes(im, qm, x, *, isolated):
    """The integer codes at every activation quantizer of ``qm`` (inputs of each IntegerLayer and IntegerAdd, the
    output of each IntegerAdd) and the fake-quantized codes there, in call order. ``isolated``: each integer layer
    and addition reads the fake-quantized codes, so that it is checked alone."""
    ref = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: ref.append(Q.quantize(a[0], mod.qparams())))
             for m in qm.modules() if isinstance(m, Q.ActivationQuantizer)]
    with torch.no_grad():
        qm(x)
    for h in hooks:
        h.remove()
    ours = []

    def pre(mod, args):
        first = len(ours)
        ours.extend(args)
        return tuple(ref[first:first + len(args)]) if isolated and first > 0 else None

    hooks = [m.register_forward_pre_hook(pre) for m in im.modules() if isinstance(m, (Q.IntegerLayer, Q.IntegerAdd))]
    def post(mod, args, out):  # the sum's codes; isolated, the next steps read the fake-quantized ones
        ours.append(out)
        return ref[len(ours) - 1] if isolated else None

    hooks += [m.register_forward_hook(post) for m in im.modules() if isinstance(m, Q.IntegerAdd)]
    with torch.no_grad():
        im(x)
    for h in hooks:
        h.remove()
    assert len(ours) == len(ref) and ours[0].is_floating_point()
    ours[0] = ref[0]  # the entry layer quantizes the float input itself
    return ours, ref


def test_quantize_model_puts_quantizers_at_every_addition(converted):
    net, before, qm, report, _, _ = converted
    assert_model_unchanged(net, before)
    adds = [n for n, m in net.named_modules() if isinstance(m, tc.surgery.Add)]
    assert len(adds) == 3
    rows = [r for r in report if isinstance(r, Q.FakeQuantizedAdd)]
    assert [r.name for r in rows] == adds and all(r.skipped is None for r in rows)
    assert all(r.act_bits == 8 and r.observer == "minmax" and r.method == "ptq" for r in rows)
    assert all(r.type_before == "Add" and r.type_after == "QuantizedAdd" for r in rows)
    for name in adds:
        add = qm.get_submodule(name)
        assert isinstance(add, Q.QuantizedAdd) and all(bool(q.calibrated) for q in Q.quantizers(add))
    n_layers = sum(isinstance(m, Q.QuantizedLayer) for m in qm.modules())
    assert len(Q.quantizers(qm)) == n_layers + 3 * len(adds)


def test_integer_graph_agrees_with_fake_quantization(converted, mnist):
    net, before, qm, _, im, report = converted
    x = mnist[1]
    assert_model_unchanged(net, before)
    assert isinstance(im, Q.IntegerNet) and im.wiring is not None
    assert not any(isinstance(m, (nn.BatchNorm2d, Q.ActivationQuantizer)) for m in im.modules())
    assert [r.name for r in report if r.type_after == "IntegerAdd"] == [
        n for n, m in net.named_modules() if isinstance(m, tc.surgery.Add)]
    assert report[-1].output == "logits" and all(r.folded for r in report[:-1] if r.type_after == "IntegerLayer")
    # each layer and addition alone, fed the fake-quantized codes: its output codes within one step
    ours, ref = _codes(im, qm, x[:100], isolated=True)
    n = same = 0
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == torch.uint8 and a.shape == b.shape
        d = (a.int() - b.int()).abs()
        assert int(d.max()) <= 1
        n, same = n + d.numel(), same + int((d == 0).sum())
    assert same / n >= 0.999
    # end to end: the same class on at least 99 % of the images, codes never far apart
    with torch.no_grad():
        out_int, out_fq = im(x), qm(x)
    assert out_int.dtype == torch.float32
    assert float((out_int.argmax(1) == out_fq.argmax(1)).float().mean()) >= 0.99
    ours, ref = _codes(im, qm, x[:100], isolated=False)
    assert float(torch.cat([(a.int() - b.int()).abs().flatten() for a, b in zip(ours, ref, strict=True)])
                 .le(1).float().mean()) >= 0.99


@pytest.mark.parametrize("converted", ["MobileNetV2Tiny"], indirect=True)  # ResNet-8 has no ReLU6
def test_relu6_is_a_clamp_at_the_code_of_six(converted):
    net, _, qm, _, im, _ = converted
    assert isinstance(net, tc.models.MobileNetV2Tiny)
    # each ReLU6 acts on the codes of the quantizer that reads it next: a clamp to [q(0), q(6)] = [Z, round(6/S) + Z]
    readers = {"stem.2": "blocks.0.expand.0"}
    for k in range(len(net.blocks)):
        readers |= {f"blocks.{k}.expand.2": f"blocks.{k}.depthwise.0",
                    f"blocks.{k}.depthwise.2": f"blocks.{k}.project.0"}
    for relu6, reader in readers.items():
        qp = qm.get_submodule(reader).input_quantizer.qparams()
        clamp = im.get_submodule(relu6.replace(".", "_"))
        q6 = round(6 / float(qp.scale)) + int(qp.zero_point)
        assert (clamp.lo, clamp.hi) == (int(qp.zero_point), min(q6, 255)), relu6
    head = im.get_submodule("head_2")  # ReLU6 read by the global mean: the accumulator code of 6 per channel
    assert torch.equal(head.hi.flatten(), torch.round(6 / im.get_submodule("head_0").acc_scale).long())


def test_quantizers_of_different_parameters_at_a_branch(mnist):
    """The stem's output read by two quantizers of different parameters (after LSQ training they differ): the stem
    hands over accumulators, each quantizer gets its own requantization, still within one step."""
    train, x = mnist
    torch.manual_seed(0)
    qm, _ = Q.quantize_model(_random_statistics(tc.models.ResNet8(), 2))
    Q.calibrate(qm, train, n_batches=2)
    with torch.no_grad():
        qm.blocks[0].add.input_quantizers[1].scale.mul_(1.3)
    im, report = Q.to_integer(qm, x[:2])
    assert report[0].name == "stem.0" and report[0].output == "accumulator"
    assert isinstance(im.blocks_0_add_requantize, Q.IntegerRequantize)
    assert isinstance(im.blocks_0_conv1_requantize, Q.IntegerRequantize)
    ours, ref = _codes(im, qm, x[:200], isolated=True)
    assert all(int((a.int() - b.int()).abs().max()) <= 1 for a, b in zip(ours, ref, strict=True))


def test_integer_addition_is_the_formula_by_hand():
    """Both input codes requantized to the output's scale (with the guard bits) by the multiplier and shift,
    added, rounded once to the output step, offset and clamped: checked on every pair of 8-bit codes in Python's
    exact rationals, and against the real sum rounded once (the fake-quantized addition)."""
    qa, qb = Q.qparams(-1.3, 2.1, bits=8), Q.qparams(0.0, 0.77, bits=8)
    qo = Q.qparams(-1.0, 2.6, bits=8)
    add = Q.IntegerAdd(qa, qb, qo)
    assert add.guard == 16
    a, b = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    got = add(a.to(torch.uint8), b.to(torch.uint8))
    assert got.dtype == torch.uint8
    za, zb, zo = int(qa.zero_point), int(qb.zero_point), int(qo.zero_point)
    terms = []
    for k, (codes, z, qp) in enumerate(((a, za, qa), (b, zb, qb))):
        m0, shift = Q.quantize_multiplier(float(qp.scale) / float(qo.scale) * 2**16)
        assert (m0, shift) == (int(add.m0[k]), int(add.shift[k]))
        m = Fraction(m0, 2 ** (31 + shift))
        table = [math.floor(m * (c - z) + Fraction(1, 2)) for c in range(256)]  # round half up
        terms.append(torch.tensor(table)[codes])
    by_hand = [zo + math.floor(Fraction(int(s), 2**16) + Fraction(1, 2)) for s in (terms[0] + terms[1]).flatten()]
    assert torch.equal(got.long().flatten(), torch.tensor(by_hand).clamp(0, 255))
    fake = Q.QuantizedAdd((_frozen(qa), _frozen(qb)), _frozen(qo))
    real = fake(Q.dequantize(a.to(torch.uint8), qa), Q.dequantize(b.to(torch.uint8), qb))
    d = (got.int() - Q.quantize(real, qo).int()).abs()
    assert int(d.max()) <= 1 and float((d == 0).float().mean()) >= 0.999


def _frozen(qp):
    q = Q.ActivationQuantizer(Q.make_observer("minmax", bits=8))
    q.scale, q.zero_point = qp.scale.clone(), qp.zero_point.clone()
    q.calibrated.fill_(True)
    return q


class _Plus(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.fc(torch.relu(self.conv2(y) + y).flatten(1))


def test_an_addition_written_with_plus_is_reported_and_refused():
    x = torch.randn(32, 1, 6, 6)
    net = _Plus()
    before = model_state(net)
    qm, report = Q.quantize_model(net, x)
    assert_model_unchanged(net, before)
    (row,) = [r for r in report if isinstance(r, Q.FakeQuantizedAdd)]
    assert row.name == "add of relu and conv2 (Conv2d)" and "tc.surgery.Add" in row.skipped
    assert row.type_before == row.type_after == "add" and row.act_bits == 8
    _, without = Q.quantize_model(net)
    assert [r.name for r in without] == [r.name for r in report if not isinstance(r, Q.FakeQuantizedAdd)]
    Q.calibrate(qm, x)
    with pytest.raises(ValueError, match=r"add of relu and conv2 \(QuantizedLayer\) is an addition written with `\+`"
                                         r".*Write it as tc.surgery.Add"):
        Q.to_integer(qm, x[:2])


class _Added(nn.Module):
    """conv - ReLU - conv, plus the first ReLU's output, through a tc.surgery.Add."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.add, self.fc = tc.surgery.Add(), nn.Linear(4 * 36, 3)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.fc(torch.relu(self.add(self.conv2(y), y)).flatten(1))


def test_quantize_model_selection_and_options_reach_the_additions():
    net, x = _Added(), torch.randn(64, 1, 6, 6)
    qm, report = Q.quantize_model(net, exclude="add")
    assert isinstance(qm.add, tc.surgery.Add) and not any(isinstance(r, Q.FakeQuantizedAdd) for r in report)
    Q.calibrate(qm, x)
    with pytest.raises(ValueError, match="addition 'add' is not quantized"):
        Q.to_integer(qm, x[:2])
    qm, report = Q.quantize_model(net, include="add", method="lsq", act_bits=6)
    assert [r.name for r in report] == ["add"] and report[0].method == "lsq" and report[0].act_bits == 6
    assert all(q.learnable and q.qmax == 63 for q in Q.quantizers(qm))
    qm, report = Q.quantize_model(net, act_bits=None)  # weight-only: nothing to observe at an addition
    assert isinstance(qm.add, tc.surgery.Add) and [r.name for r in report] == ["conv1", "conv2", "fc"]
    with pytest.raises(TypeError, match="example_input must be a torch.Tensor or None"):
        Q.quantize_model(net, [1.0])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        Q.quantize_model("net")
    qm, _ = Q.quantize_model(net)
    Q.calibrate(qm, x)
    qm.add.input_quantizers[1].calibrated.fill_(False)
    with pytest.raises(ValueError, match="addition 'add' has no calibrated quantizer of input 1"):
        Q.to_integer(qm, x[:2])
    # the fake-quantized addition: q_out(q_a(a) + q_b(b)), the calibrated observers at its inputs and output
    Q.calibrate(qm, x)
    a, b = torch.randn(5, 4, 6, 6), torch.rand(5, 4, 6, 6)
    qa, qb = (q.qparams() for q in qm.add.input_quantizers)
    want = Q.fake_quantize(Q.fake_quantize(a, qa) + Q.fake_quantize(b, qb), qm.add.output_quantizer.qparams())
    assert torch.equal(qm.add(a, b), want)


def test_float64_model_and_inputs():
    net = _Added().double().eval()
    x64 = torch.randn(128, 1, 6, 6, dtype=torch.float64)
    qm, _ = Q.quantize_model(net)
    Q.calibrate(qm, x64)
    im, _ = Q.to_integer(qm, x64[:2])
    with torch.no_grad():
        out_int, out_fq = im(x64), qm(x64)
        out32 = im(x64.float())
    assert out_int.dtype == torch.float32
    assert float((out_int.argmax(1) == out_fq.argmax(1)).float().mean()) >= 0.97
    assert float((out32.argmax(1) == out_int.argmax(1)).float().mean()) >= 0.97
    ours, ref = _codes(im, qm, x64, isolated=True)
    assert all(int((a.int() - b.int()).abs().max()) <= 1 for a, b in zip(ours, ref, strict=True))


def test_integer_graph_follows_the_device(converted, mnist, device):
    _, _, qm, _, im, _ = converted
    x = mnist[1][:16]
    with torch.no_grad():
        ref = im(x)
        out = Q.to_integer(qm, x[:2])[0].to(device)(x.to(device))
    assert out.device.type == torch.device(device).type and torch.equal(out.cpu(), ref)


class _Block(nn.Module):
    """conv → Add(conv output, input) → ReLU (module or function), the sum read by the ReLU alone or also by
    ``tap`` (which the fusion must then leave alone)."""

    def __init__(self, functional: bool = False, tap: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv0, self.conv1 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.add, self.relu = tc.surgery.Add(), nn.ReLU()
        self.functional, self.tap = functional, tap
        self.fc = nn.Linear(4 * 36, 3)

    def forward(self, x):
        y = torch.relu(self.conv0(x))
        s = self.add(self.conv1(y), y)
        z = torch.relu(s) if self.functional else self.relu(s)
        return self.fc((z + s if self.tap else z).flatten(1))


def test_add_relu_fusion_where_one_relu_alone_reads_the_sum(mnist):
    x = mnist[1]
    for name, fused in (("ResNet8", True), ("MobileNetV2Tiny", False)):  # MobileNet's sums are linear
        net = getattr(tc.models, name)().eval()
        qm, report = Q.quantize_model(net, x[:2])
        rows = [r for r in report if isinstance(r, Q.FakeQuantizedAdd)]
        assert len(rows) == 3 and all(r.relu is fused for r in rows)
        assert all(m.relu is fused for m in qm.modules() if isinstance(m, Q.QuantizedAdd))
        qm, report = Q.quantize_model(net)  # no trace without an example input: nothing fused
        assert all(r.relu is False for r in report if isinstance(r, Q.FakeQuantizedAdd))
    z = torch.randn(8, 1, 6, 6)
    for functional, tap, fused in ((False, False, True), (True, False, True), (False, True, False)):
        qm, report = Q.quantize_model(_Block(functional, tap), z)
        assert qm.add.relu is fused and [r.relu for r in report if r.name == "add"] == [fused]


def test_fused_add_relu_is_the_formula_and_makes_the_next_relu_an_identity():
    qa, qb, qo = Q.qparams(-1.3, 2.1, bits=8), Q.qparams(0.0, 0.77, bits=8), Q.qparams(0.0, 2.6, bits=8)
    a, b = torch.randn(4, 50) * 1.5, torch.rand(4, 50) * 0.7
    add = Q.QuantizedAdd((_frozen(qa), _frozen(qb)), _frozen(qo), relu=True)
    by_hand = Q.fake_quantize(torch.relu(Q.fake_quantize(a, qa) + Q.fake_quantize(b, qb)), qo)
    assert torch.equal(add(a, b), by_hand) and bool((by_hand >= 0).all()) and "relu=True" in repr(add)
    with pytest.raises(TypeError, match="relu must be a bool"):
        Q.QuantizedAdd((_frozen(qa), _frozen(qb)), _frozen(qo), relu=1)
    # calibrated after the ReLU: the sum's zero point is 0, so the block's own ReLU changes nothing
    x = torch.randn(64, 1, 6, 6)
    qm, _ = Q.quantize_model(_Block(), x[:2])
    Q.calibrate(qm, x)
    assert int(qm.add.output_quantizer.zero_point) == 0
    with torch.no_grad():
        want = qm(x)
        qm.relu = nn.Identity()
        assert torch.equal(qm(x), want)


def test_fused_add_relu_in_integers_clamps_at_the_code_of_zero():
    """A fused sum whose output grid reaches below zero (a zero point above the smallest code, as one set by hand
    or trained) still returns the ReLU's codes: the integer network clamps at the code of 0."""
    x = torch.randn(64, 1, 6, 6)
    qm, _ = Q.quantize_model(_Block(), x[:2])
    Q.calibrate(qm, x)
    im, _ = Q.to_integer(qm, x[:2])
    assert "add_relu" not in dict(im.named_children())  # zero point 0: the addition's clamp at 0 is the ReLU
    out_q = qm.add.output_quantizer
    out_q.scale, out_q.zero_point = out_q.scale * 1.25, torch.tensor(40, dtype=torch.int32)
    im, _ = Q.to_integer(qm, x[:2])
    clamp = dict(im.named_children())["add_relu"]
    assert isinstance(clamp, Q.IntegerClamp) and (clamp.lo, clamp.hi) == (40, None)
    seen = []
    hook = next(m for m in im.modules() if isinstance(m, Q.IntegerAdd)).register_forward_hook(
        lambda mod, args, out: seen.append(out))
    with torch.no_grad():
        got, want = im(x), qm(x)
    hook.remove()
    assert int(seen[0].min()) < 40  # the clamp had work to do
    assert float((got.argmax(1) == want.argmax(1)).float().mean()) >= 0.95
    assert float((got - want).abs().max()) <= 0.05 * float(want.abs().max())
