"""Integer-only inference: the multiplier decomposition, the rounding shift (and its bound), integer LeNet-5,
SmallCNN and other traced chains whose codes equal the fake-quantized models' within 1 LSB, with int8 weights in
their state (real bytes), and every graph the conversion cannot prove exact refused by name."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorcompress as tc
from tensorcompress import quantization as Q

MULTIPLIERS = st.floats(2.0**-32, 2.0**30, exclude_max=True, allow_nan=False, allow_infinity=False)


@given(MULTIPLIERS)
def test_quantize_multiplier_represents_m(m):
    m0, shift = Q.quantize_multiplier(m)
    assert isinstance(m0, int) and isinstance(shift, int)
    assert 2**30 <= m0 < 2**31
    assert -30 <= shift <= 31
    # exact rational arithmetic: relative error at most 2^-31
    assert abs(Fraction(m0, 2**31) * Fraction(2) ** -shift - Fraction(m)) <= Fraction(m) * Fraction(1, 2**31)
    assert (shift < 0) == (m >= 1)


def test_quantize_multiplier_known_values_and_errors():
    assert Q.quantize_multiplier(0.5) == (2**30, 0)
    assert Q.quantize_multiplier(0.75) == (3 * 2**29, 0)
    assert Q.quantize_multiplier(0.1) == (round(0.8 * 2**31), 3)
    assert Q.quantize_multiplier(3.0) == (3 * 2**29, -2)
    assert Q.quantize_multiplier(1 - 2**-40) == (2**30, -1)  # M0 rounds up to 1: renormalised
    for bad in (0.0, -1.0, float("nan"), float("inf"), 2.0**30, 2.0**-33):
        with pytest.raises(ValueError, match=r"m must be a finite number in \[2\^-32, 2\^30\)"):
            Q.quantize_multiplier(bad)
    for bad in ("0.5", None, True, torch.tensor([0.5, 0.25])):
        with pytest.raises(TypeError, match="m must be a real number"):
            Q.quantize_multiplier(bad)


@given(st.integers(-(2**31), 2**31 - 1), st.floats(1e-6, 0.99) | st.floats(1.0, 1000.0))
def test_requantize_rounds_to_nearest(acc, m):
    m0, shift = Q.quantize_multiplier(m)
    out = Q.requantize(torch.tensor([acc], dtype=torch.int32), torch.tensor(m0), torch.tensor(shift))
    assert out.dtype == torch.int64
    exact = Fraction(acc * m0, 2 ** (31 + shift))
    assert int(out) == math.floor(exact + Fraction(1, 2))  # nearest, ties toward +inf
    assert abs(int(out) - acc * m) <= 0.5 + abs(acc) * m * 2.0**-30


def test_requantize_errors():
    acc = torch.tensor([5], dtype=torch.int32)
    with pytest.raises(TypeError, match="acc must be an integer tensor"):
        Q.requantize(acc.float(), torch.tensor(2**30), torch.tensor(0))
    with pytest.raises(TypeError, match="m0 must be an integer tensor"):
        Q.requantize(acc, 0.5, torch.tensor(0))
    with pytest.raises(ValueError, match="shift must lie in"):
        Q.requantize(acc, torch.tensor(2**30), torch.tensor(-31))
    with pytest.raises(ValueError, match="shift must lie in"):
        Q.requantize(acc, torch.tensor(2**30), torch.tensor(32))
    with pytest.raises(ValueError, match="m0 must lie in"):
        Q.requantize(acc, torch.tensor(2**31), torch.tensor(0))


EDGE = 2**32 - 1


@given(st.integers(-EDGE, EDGE) | st.sampled_from([EDGE, -EDGE, EDGE - 1, 2**31, -(2**31) - 1]),
       st.integers(0, 2**31 - 1) | st.just(2**31 - 1), st.integers(-30, 31) | st.just(31))
def test_requantize_is_exact_up_to_its_bound(acc, m0, shift):
    """|acc| < 2^32 is accepted and exact for every multiplier and shift: the product (below 2^63) and its rounding
    stay in int64, also at the largest shift, where adding half before shifting overflowed."""
    out = Q.requantize(torch.tensor([acc]), torch.tensor(m0), torch.tensor(shift))
    assert int(out) == math.floor(Fraction(acc * m0, 2 ** (31 + shift)) + Fraction(1, 2))


@given(st.integers(2**32, 2**62) | st.integers(-(2**62), -(2**32)) | st.sampled_from([2**32, -(2**32), 2**36]))
def test_requantize_refuses_accumulators_beyond_its_bound(acc):
    with pytest.raises(ValueError, match=r"\|acc\| must stay below 2\^32"):
        Q.requantize(torch.tensor([0, acc]), torch.tensor(2**30), torch.tensor(0))


def _integer(qm, x):
    """The integer network of ``qm`` traced on ``x``."""
    im, report = Q.to_integer(qm, x)
    assert [r.type_after for r in report] == ["IntegerLayer"] * len(report)
    return im


def _codes(im, qm, x, *, isolated):
    """(integer codes, fake-quant codes, integer output, fake-quant output). The codes are the inputs of each
    integer layer and the matching ActivationQuantizer's codes. ``isolated``: each integer layer receives the
    fake-quantized model's codes, so that it is checked alone, without the differences of the layers before."""
    ref = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: ref.append(Q.quantize(a[0], mod.qparams())))
             for m in qm.modules() if isinstance(m, Q.ActivationQuantizer)]
    with torch.no_grad():
        out_fq = qm(x)
    for h in hooks:
        h.remove()
    ours = []

    def pre(mod, a):
        i = len(ours)
        ours.append(a[0])
        if isolated and i > 0:
            return (ref[i],)
        return None

    hooks = [m.register_forward_pre_hook(pre) for m in im.modules() if isinstance(m, Q.IntegerLayer)]
    with torch.no_grad():
        out_int = im(x)
    for h in hooks:
        h.remove()
    assert len(ours) == len(ref) and ours[0].is_floating_point()
    ours[0] = ref[0]  # the entry receives the float input and quantizes it itself
    return ours, ref, out_int, out_fq


def _check_within_one_lsb(ours, ref, *, exact):
    n = same = 0
    for a, b in zip(ours, ref, strict=True):
        assert not a.is_floating_point() and a.dtype == torch.uint8 and a.shape == b.shape
        d = (a.to(torch.int32) - b.to(torch.int32)).abs()
        assert int(d.max()) <= 1
        n, same = n + d.numel(), same + int((d == 0).sum())
    assert same / n >= exact


@pytest.fixture(scope="module")
def lenet():
    net = tc.models.pretrained("lenet5")  # shipped inside the package
    train, test = tc.data.load_mnist_sample()
    qm, _ = Q.quantize_model(net)
    Q.calibrate(qm, train, n_batches=4)
    return net, qm, test


def fold(net):
    fused, report = tc.surgery.fuse_conv_bn(net)
    assert len(report) == 4
    return fused


@pytest.fixture(scope="module")
def smallcnn():
    net = tc.models.pretrained("smallcnn")
    train, test = tc.data.load_digits()
    cal = torch.utils.data.Subset(train, range(256))
    folded, _ = Q.quantize_model(fold(net))
    Q.calibrate(folded, cal)
    unfolded, _ = Q.quantize_model(net)  # BatchNorm left after the quantized convolutions
    Q.calibrate(unfolded, cal)
    x = torch.stack([test[i][0] for i in range(len(test))])
    return net, folded, unfolded, test, x


def test_integer_lenet5_codes_equal_fake_quantized_within_one_lsb(lenet):
    net, qm, test = lenet
    x = test.tensors[0][:400]
    im = _integer(qm, x[:2])
    ours, ref, out_int, out_fq = _codes(im, qm, x, isolated=False)
    assert len(ours) == 4
    _check_within_one_lsb(ours, ref, exact=0.999)
    assert (out_int.argmax(1) == out_fq.argmax(1)).float().mean() >= 0.995
    assert tc.evaluate(im, test).accuracy == pytest.approx(tc.evaluate(qm, test).accuracy, abs=0.003)
    # each layer alone, fed the fake-quantized codes: equal but for float rounding of the fake-quantized sums
    ours, ref, out_int, out_fq = _codes(im, qm, x, isolated=True)
    _check_within_one_lsb(ours, ref, exact=0.9999)
    lsb = im.fc2.out_scale
    assert float(((out_int - out_fq).abs() <= lsb).float().mean()) >= 0.999  # logits within 1 accumulator LSB


@pytest.mark.parametrize("which", ["folded", "unfolded"])
def test_integer_smallcnn_codes_equal_fake_quantized_within_one_lsb(smallcnn, which):
    net, folded, unfolded, test, x = smallcnn
    qm = folded if which == "folded" else unfolded
    im, report = Q.to_integer(qm, x[:2])
    assert isinstance(im, Q.IntegerNet) and isinstance(im.mean, Q.IntegerMeanPool)
    assert [r.detail["output"] for r in report] == ["codes"] * 3 + ["accumulator", "logits"]
    folds = ["features.0.1", "features.0.4", "features.1.1", "features.1.4"] if which == "unfolded" else [None] * 4
    assert [r.detail.get("folded") for r in report][:4] == folds
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in im.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in qm.modules()) == (which == "unfolded")  # untouched
    ours, ref, out_int, out_fq = _codes(im, qm, x, isolated=False)
    assert len(ours) == 5
    _check_within_one_lsb(ours, ref, exact=0.99)
    assert (out_int.argmax(1) == out_fq.argmax(1)).float().mean() >= 0.99
    ours, ref, out_int, out_fq = _codes(im, qm, x, isolated=True)
    _check_within_one_lsb(ours, ref, exact=0.999)
    assert float(((out_int - out_fq).abs() <= im.classifier.out_scale).float().mean()) >= 0.999
    assert tc.evaluate(im, test).accuracy == pytest.approx(tc.evaluate(qm, test).accuracy, abs=0.006)
    with pytest.raises(ValueError, match="expected input of shape"):
        im(x[:, :, :4])


def test_integer_mean_pool_is_the_rounded_mean():
    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-(2**20), 2**20, (6, 3, 5, 5), generator=g, dtype=torch.int32).relu()
    acc_scale = torch.tensor([1e-4, 3e-4, 7e-5], dtype=torch.float64)
    out_qp = Q.qparams(0.0, float((acc.double().mean(dim=(2, 3)) * acc_scale).max()), bits=8)
    pool = Q.IntegerMeanPool(acc_scale, out_qp, 25)
    got = pool(acc)
    real = acc.double().mean(dim=(2, 3)) * acc_scale
    ref = Q.quantize(real.float(), out_qp)
    assert got.dtype == torch.uint8
    assert int((got.int() - ref.int()).abs().max()) <= 1
    assert float((got == ref).float().mean()) >= 0.99
    with pytest.raises(ValueError, match="H·W = 25"):
        pool(acc[:, :, :4])
    with pytest.raises(ValueError, match="integer accumulators"):
        pool(acc.float())


def test_integer_state_is_int8_and_smaller(lenet, smallcnn):
    net, qm, test = lenet
    im = _integer(qm, test.tensors[0][:2])
    sd = im.state_dict()
    assert sd["conv1.weight"].dtype == torch.int8 and sd["fc1.bias"].dtype == torch.int32
    assert all(v.dtype != torch.float32 or v.numel() <= 10 for v in sd.values())
    assert tc.model_size_bytes(net) / tc.model_size_bytes(im) >= 3.9
    assert isinstance(qm.conv1, Q.QuantizedLayer)  # the input model is untouched
    net, folded, _, _, x = smallcnn
    im = _integer(folded, x[:2])
    sd = im.state_dict()
    weights = [k for k in sd if k.endswith("weight")]
    assert len(weights) == 5 and all(sd[k].dtype == torch.int8 for k in weights)
    assert all(v.dtype != torch.float32 or v.numel() <= 10 for v in sd.values())
    n_weights = sum(sd[k].numel() for k in weights)
    # int8 weights, int32 biases and 5 bytes of multiplier per channel, plus torch.save's fixed overhead
    assert n_weights <= tc.model_size_bytes(im) <= n_weights + 9 * 10 * 64 + 20_000
    assert tc.model_size_bytes(net) / tc.model_size_bytes(im) >= 3.0


def _calibrated(net, x, **options):
    qm, _ = Q.quantize_model(net.eval(), **options)
    return Q.calibrate(qm, x)


def test_to_integer_refuses_what_it_cannot_do():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x = torch.randn(8, 4)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        Q.to_integer("net", x)
    with pytest.raises(TypeError, match="example_input must be a torch.Tensor"):
        Q.to_integer(_calibrated(net, x), [1.0])
    with pytest.raises(TypeError, match="takes 2 positional arguments"):
        Q.to_integer(_calibrated(net, x), x, "0")  # the selection is keyword-only
    with pytest.raises(ValueError, match="to_integer: nothing to act on, the model has no QuantizedLayer"):
        Q.to_integer(net, x)
    qm, _ = Q.quantize_model(net)
    with pytest.raises(ValueError, match="no calibrated input quantizer"):
        Q.to_integer(qm, x)
    with pytest.raises(ValueError, match="per-tensor activations of at most 8 bits"):
        Q.to_integer(_calibrated(net, x, act_bits=12), x)
    with pytest.raises(ValueError, match="weights of at most 8 bits"):
        Q.to_integer(_calibrated(net, x, weight_bits=9), x)
    two = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"layer '2' \(Linear\) is not quantized"):
        Q.to_integer(_calibrated(two, x, include="0"), x)
    with pytest.raises(ValueError, match="layer '0' is left out by include/exclude"):
        Q.to_integer(_calibrated(two, x), x, exclude="0")
    with pytest.raises(ValueError, match=r"include entries \['nope'\] match no QuantizedLayer"):
        Q.to_integer(_calibrated(two, x), x, include="nope")
    img = torch.randn(8, 1, 5, 5)
    bn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match="per-tensor or learnable weight scales"):
        Q.to_integer(_calibrated(bn, img, per_channel=False), img)
    odd = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Conv2d(1, 2, 3))  # BN before the conv
    with pytest.raises(ValueError, match=r"0 \(BatchNorm2d\) does not directly follow"):
        Q.to_integer(_calibrated(odd, img), img)
    late = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(18, 2))
    with pytest.raises(ValueError, match=r"2 \(BatchNorm2d\) does not directly follow"):
        Q.to_integer(_calibrated(late, img), img)


class _Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 36, 3)

    def forward(self, x):
        y = torch.relu(self.conv1(x))
        return self.fc(torch.relu(self.conv2(y) + y).flatten(1))


class _Twice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.out = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.fc(torch.relu(self.fc(x))))


class _Pair(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        y = self.fc(x)
        return y, y.detach()


@pytest.mark.parametrize("net, x, message", [
    (_Residual(), torch.randn(16, 1, 6, 6), r"add of relu and conv2 \(QuantizedLayer\) is an addition written with "
                                            r"`\+`.* Write it as tc.surgery.Add"),
    (_Twice(), torch.randn(16, 4), "layer 'fc' is called 2 times"),
    (_Pair(), torch.randn(16, 4), "returns one tensor, got tuple"),
    (torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LeakyReLU(), torch.nn.Linear(3, 2)), torch.randn(16, 4),
     r"cannot prove 1 \(LeakyReLU\) exact on integer codes"),
    (torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2), torch.nn.Softmax(1)), torch.randn(16, 4),
     r"cannot prove 2 \(Softmax\) exact after the last quantized layer"),
    (torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.AvgPool2d(2, ceil_mode=True), torch.nn.Flatten(),
                         torch.nn.Linear(12, 2)), torch.randn(16, 1, 6, 6), r"cannot prove 1 \(AvgPool2d\) exact"),
    (torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.GELU(), torch.nn.Linear(3, 2)), torch.randn(16, 4),
     r"cannot prove 1 \(GELU\) exact on integer codes"),
    (torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 2)), torch.randn(16, 4),
     r"cannot prove 1 \(Sigmoid\) exact on integer codes"),
])
def test_to_integer_refuses_every_graph_it_cannot_prove(net, x, message):
    qm = _calibrated(net, x)
    before = {k: v.clone() for k, v in qm.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        Q.to_integer(qm, x[:2])
    assert all(torch.equal(v, qm.state_dict()[k]) for k, v in before.items())  # untouched on the way out


def _agree_within_one_lsb(net, x, *, logits_lsb=2):
    """The integer network of ``net`` (quantized and calibrated on ``x``) against the fake-quantized one, each
    integer layer fed the fake-quantized codes of its input: every layer's output codes within 1 of the
    fake-quantized codes (the float sums of the fake-quantized model round differently on near-ties), the logits
    within ``logits_lsb`` accumulator LSBs; run end to end, nearly every class decision agrees."""
    qm = _calibrated(net, x)
    im, report = Q.to_integer(qm, x[:3])
    ours, ref, out_int, out_fq = _codes(im, qm, x, isolated=True)
    for a, b in zip(ours, ref, strict=True):
        assert a.dtype == b.dtype and int((a.int() - b.int()).abs().max()) <= 1
        assert float((a == b).float().mean()) >= 0.99
    last = [m for m in im.modules() if isinstance(m, Q.IntegerLayer)][-1]
    assert float(((out_int - out_fq).abs() <= logits_lsb * last.out_scale).float().mean()) >= 0.99
    with torch.no_grad():
        assert float((im(x).argmax(1) == qm(x).argmax(1)).float().mean()) >= 0.97
    return im, report, qm


def test_relu6_clamps_at_the_code_of_six():
    """ReLU6 between two layers is a clamp of the codes to [q(0), q(6)], not to 6: on this network (activations
    spread over about [-20, 20]) a clamp of the codes at 6 moves the logits by about their whole range."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU6(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 36, 5), torch.nn.Hardtanh(-0.5, 0.25), torch.nn.Linear(5, 3))
    with torch.no_grad():
        net[0].weight.mul_(10)
    x = torch.randn(256, 1, 8, 8) * 3
    im, report, qm = _agree_within_one_lsb(net, x)
    clamps = [m for m in im.modules() if isinstance(m, Q.IntegerClamp)]
    q6 = int(Q.quantize(torch.tensor(6.0), qm[3].input_quantizer.qparams()))
    assert [(c.lo, c.hi) for c in clamps][0] == (int(qm[3].input_quantizer.zero_point), q6) and q6 > 6
    with torch.no_grad():
        out_int, out_fq = im(x), qm(x)
    assert float((out_int - out_fq).abs().max()) < 0.05 * float(out_fq.abs().max())


def test_functional_relu6_and_hardtanh_with_arguments():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.a, self.b, self.c = torch.nn.Linear(6, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            x = torch.nn.functional.relu6(self.a(x))
            return self.c(torch.nn.functional.hardtanh(self.b(x), -0.3, max_val=0.4))

    _agree_within_one_lsb(Net(), torch.randn(256, 6) * 4)


@settings(max_examples=25, deadline=None)
@given(st.floats(-4, 4, allow_subnormal=True) | st.sampled_from([0.0, -0.0, 1e-30, -6.0]),
       st.floats(0.01, 8) | st.sampled_from([6.0, 1e30]), st.integers(0, 2**16))
def test_any_clip_is_a_clamp_at_the_codes_of_its_bounds(lo, width, seed):
    """Hardtanh(lo, hi) between two layers, for bounds inside, at the edge of and far outside the activations'
    range (tiny, negative zero, huge): the integer network's codes stay within 1 of the fake-quantized codes."""
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Hardtanh(lo, lo + width), torch.nn.Linear(7, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    _agree_within_one_lsb(net, torch.randn(128, 5, generator=g) * 3, logits_lsb=3)


class _Pooled(torch.nn.Module):
    """Functional max-pooling with positional and keyword arguments (rebuilt as an nn.MaxPool2d)."""

    def __init__(self, return_indices=False):
        super().__init__()
        torch.manual_seed(3)
        self.return_indices = return_indices
        self.conv, self.fc = torch.nn.Conv2d(1, 3, 3), torch.nn.Linear(3 * 16, 2)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(self.conv(x), 3, 2, padding=1, ceil_mode=True,
                                           return_indices=self.return_indices)
        return self.fc((y[0] if self.return_indices else y).flatten(1))


def test_functional_max_pool_with_arguments():
    im, _, _ = _agree_within_one_lsb(_Pooled(), torch.randn(128, 1, 9, 9))
    pool = [m for m in im.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding, p.ceil_mode) for p in pool] == [(3, 2, 1, True)]
    with pytest.raises(ValueError, match=r"cannot prove max_pool2d_with_indices exact"):
        Q.to_integer(_calibrated(_Pooled(return_indices=True), torch.randn(16, 1, 9, 9)), torch.randn(2, 1, 9, 9))


class _SpatialMean(torch.nn.Module):
    """conv - ReLU - max-pool - conv - ReLU - mean over (H, W) - linear: not a SmallCNN (on which to_integer once
    crashed inside torch)."""

    def __init__(self, keepdim=False):
        super().__init__()
        torch.manual_seed(2)
        self.keepdim = keepdim
        self.c1, self.c2 = torch.nn.Conv2d(2, 6, 3, padding=1), torch.nn.Conv2d(6, 8, 3)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        y = torch.relu(self.c2(torch.nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)))
        y = y.mean(dim=(-1, -2), keepdim=self.keepdim)
        return self.fc(y.flatten(1) if self.keepdim else y)


@pytest.mark.parametrize("keepdim", [False, True])
def test_a_spatial_mean_becomes_one_integer_mean_pool(keepdim):
    x = torch.randn(128, 2, 10, 10)
    im, report, _ = _agree_within_one_lsb(_SpatialMean(keepdim), x)
    assert isinstance(im.mean, Q.IntegerMeanPool) and im.mean.hw == 9 and im.mean.keepdim == keepdim
    assert [r.detail["output"] for r in report] == ["codes", "accumulator", "logits"]
    adaptive = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d((1, 1)),
                                   torch.nn.Flatten(), torch.nn.Linear(4, 3))
    im, _, _ = _agree_within_one_lsb(adaptive, x)
    assert isinstance(im.get_submodule("2"), Q.IntegerMeanPool)
    with pytest.raises(ValueError, match=r"expected input of shape N x 2 x 10 x 10, got \(3, 2, 8, 8\)"):
        im(x[:3, :, :8, :8])


def test_relu6_before_a_mean_clamps_the_accumulators_at_the_code_of_six():
    """ReLU6 on accumulators that a global mean reads: a clamp per channel at the accumulator code nearest 6 (half
    an accumulator step from 6, far below an output step)."""
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.mul_(8)  # many activations above 6
    im, report, qm = _agree_within_one_lsb(net, torch.randn(256, 1, 6, 6) * 2)
    assert [r.detail["output"] for r in report] == ["accumulator", "logits"]
    clamp, layer = im.get_submodule("1"), im.get_submodule("0")
    assert clamp.lo.flatten().tolist() == [0, 0, 0]
    assert torch.equal(clamp.hi.flatten(), torch.round(6 / layer.acc_scale).long())


@pytest.mark.parametrize("pool", [torch.nn.AvgPool2d(2), torch.nn.AvgPool2d(3, stride=2, padding=1)])
def test_average_pooling_is_a_window_sum_and_one_requantization(pool):
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(), pool, torch.nn.Flatten(),
                              torch.nn.LazyLinear(3))
    x = torch.randn(128, 2, 8, 8)
    net(x)  # materialise the linear layer
    im, _, _ = _agree_within_one_lsb(net, x)
    step = im.get_submodule("2")
    assert isinstance(step, Q.IntegerMeanPool) and step.window == ((pool.kernel_size,) * 2, (pool.stride,) * 2,
                                                                    (pool.padding,) * 2)
    assert step.hw == pool.kernel_size**2


def test_grouped_convolution():
    torch.manual_seed(6)
    net = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, groups=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, groups=8),
                              torch.nn.ReLU6(), torch.nn.Flatten(), torch.nn.Linear(8 * 16, 3))
    _agree_within_one_lsb(net, torch.randn(128, 4, 8, 8))


def test_to_integer_folds_batchnorm_with_negative_scale():
    g = torch.Generator().manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 36, 3)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.5, -0.7, 0.2, -2.0]))
        net[1].running_mean.copy_(torch.randn(4, generator=g))
        net[1].running_var.copy_(torch.rand(4, generator=g) + 0.5)
        net[1].bias.copy_(torch.randn(4, generator=g))
    x = torch.randn(64, 2, 6, 6, generator=g)
    qm, _ = Q.quantize_model(net)
    Q.calibrate(qm, x)
    im, report = Q.to_integer(qm, x[:1])
    with torch.no_grad():
        out_int, out_fq = im(x), qm(x)
    assert list(im._modules) == ["0", "2", "3", "4"] and isinstance(qm[1], torch.nn.BatchNorm2d)
    assert report[0].detail == {"output": "codes", "folded": "1"}
    assert report[0].params_before == sum(p.numel() for p in (*qm[0].parameters(), *qm[1].parameters()))
    lsb = im.get_submodule("4").out_scale
    # codes into the linear layer differ by at most one LSB, each moving a logit by at most sum |q_w| LSBs
    bound = im.get_submodule("4").weight.abs().sum(1).float() * lsb + lsb
    assert bool(((out_int - out_fq).abs() <= bound).all())
    assert float((out_int - out_fq).abs().max()) < 0.05 * float(out_fq.abs().max())


def test_integer_network_follows_the_device(lenet, device):
    _, qm, test = lenet
    x = test.tensors[0][:32]
    im = _integer(qm, x)
    with torch.no_grad():
        ref = im(x)
        out = _integer(qm, x).to(device)(x.to(device))
    assert out.device.type == torch.device(device).type and out.dtype == torch.float32
    assert torch.equal(out.cpu(), ref)
    acc = torch.tensor([7, -7, 2**20, -(2**31)], device=device)
    r = Q.requantize(acc, torch.tensor(2**30, device=device), torch.tensor(0, device=device))
    assert r.device.type == torch.device(device).type and r.tolist() == [4, -3, 2**19, -(2**30)]


@pytest.mark.parametrize("dtype_in", [torch.float16, torch.bfloat16, torch.float64])
def test_integer_network_takes_other_float_inputs(lenet, dtype_in):
    _, qm, test = lenet
    x = test.tensors[0][:16]
    im = _integer(qm, x)
    with torch.no_grad():
        out, ref = im(x.to(dtype_in)), im(x)
    assert out.dtype == torch.float32
    # the entry quantizes in float32: a cast of the input moves at most a few codes of its first layer
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


# ------------------------------------------------------------------------------- integer products in floating point

def _int64_product(xi, w, conv_args):
    """The oracle: the product in int64 arithmetic (PyTorch's integer kernels on the CPU)."""
    xi, w = xi.long(), w.long()
    return torch.nn.functional.conv2d(xi, w, **conv_args) if conv_args is not None else xi @ w.T


def test_float32_rule_follows_bit_widths_and_fan_in():
    assert Q.float32_is_exact(514, 128, 255) and not Q.float32_is_exact(515, 128, 255)  # 8-bit weights and inputs
    assert Q.float32_is_exact(1040, 127, 127) and not Q.float32_is_exact(1041, 127, 127)
    assert Q.float32_is_exact(2**24, 1, 1) and not Q.float32_is_exact(2**24 + 1, 1, 1)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.sampled_from([1, 3, 5]), st.sampled_from([1, 2]), st.integers(1, 17),
       st.sampled_from(["random", "extreme", "alternating"]), st.integers(0, 2**31 - 1))
def test_float_products_equal_the_integer_products(cin, ksize, groups, batch, codes, seed):
    from tensorcompress.quantization.integer import _integer_product

    g = torch.Generator().manual_seed(seed)
    cin, cout = cin * groups, 2 * groups
    fan = (cin // groups) * ksize * ksize
    shape_x, shape_w = (batch, cin, 6, 6), (cout, cin // groups, ksize, ksize)
    if codes == "random":
        xi, w = torch.randint(-255, 256, shape_x, generator=g), torch.randint(-128, 128, shape_w, generator=g)
    elif codes == "extreme":  # every term at its bound: the sums reach fan-in x 128 x 255
        xi, w = torch.full(shape_x, 255), torch.full(shape_w, -128)
    else:
        xi = torch.where(torch.rand(shape_x, generator=g) < 0.5, 255, -255)
        w = torch.where(torch.rand(shape_w, generator=g) < 0.5, 127, -128)
    args = dict(stride=1, padding=1, dilation=1, groups=groups)
    want = _int64_product(xi, w, args)
    for exact in (Q.float32_is_exact(fan, 128, 255), False):
        assert torch.equal(_integer_product(xi.int() + 3, torch.tensor(3), w.to(torch.int8), args, exact).long(), want)
    lin_x, lin_w = xi.reshape(batch, -1)[:, :fan], w.reshape(cout, -1)[:, :fan]
    assert torch.equal(_integer_product(lin_x.int(), torch.tensor(0), lin_w.to(torch.int8), None, True).long(),
                       _int64_product(lin_x, lin_w, None))


def test_float32_beyond_the_bound_would_round():
    """The bound is needed: 4096 terms near 127 x 255 sum beyond 2^24, where float32 loses the odd units."""
    from tensorcompress.quantization.integer import _integer_product

    g = torch.Generator().manual_seed(0)
    xi, w = torch.randint(200, 256, (64, 4096), generator=g), torch.randint(100, 128, (8, 4096), generator=g)
    want = _int64_product(xi, w, None)
    assert not Q.float32_is_exact(4096, 127, 255)
    float64 = _integer_product(xi.int(), torch.tensor(0), w.to(torch.int8), None, False)
    assert torch.equal(float64.long(), want)
    assert not torch.equal((xi.float() @ w.float().T).long(), want)  # float32 would round


def test_integer_network_products_are_bit_identical_in_float32_and_float64(lenet, smallcnn):
    for qm, x in ((lenet[1], lenet[2].tensors[0][:64]), (smallcnn[1], smallcnn[4][:64])):
        im = _integer(qm, x[:2])
        layers = [m for m in im.modules() if isinstance(m, Q.IntegerLayer)]
        assert any(m.float32_exact for m in layers)
        with torch.no_grad():
            fast = im(x)
            for m in layers:
                m.float32_exact = False
            assert torch.equal(im(x), fast)
    lenet_int = _integer(lenet[1], lenet[2].tensors[0][:2])
    assert [m.float32_exact for m in lenet_int.modules() if isinstance(m, Q.IntegerLayer)] \
        == [True, True, False, True]  # LeNet-5: fc1's fan-in 800 exceeds 514
