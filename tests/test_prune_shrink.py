"""shrink: physically smaller LeNet-300-100, LeNet-5 and SmallCNN computing the masked model's function; refuses
graphs it cannot follow (residual and depthwise networks: tests/test_coupled_channels.py)."""


import pytest
import torch
from helpers import assert_model_unchanged, model_state
from torch import nn

import tensorcompress as tc
from tensorcompress.pruning import prune, shrink


def _random_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics: a wrong channel would show
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model


CASES = [  # model, input shape, layers whose filters are pruned, layers whose input channels are pruned
    (tc.models.LeNet300100, (5, 784), ["fc1", "fc2"], ["fc2", "fc3"]),
    (tc.models.LeNet5, (5, 1, 28, 28), ["conv1", "conv2", "fc1"], ["conv2", "fc2"]),
    (lambda: tc.models.SmallCNN(input_size=8), (5, 1, 8, 8), ["features.*"], ["features.*", "classifier"]),
]


@pytest.mark.parametrize(("make", "shape", "filters", "channels"), CASES, ids=["lenet300100", "lenet5", "smallcnn"])
@pytest.mark.parametrize("structure", ["filters", "channels"])
def test_shrink_equals_masked_model(make, shape, filters, channels, structure, dtype):
    torch.manual_seed(0)
    model = _random_bn(make()).to(dtype).eval()
    x = torch.randn(shape, dtype=dtype)
    exclude = "features.0.0" if structure == "channels" else None  # the first layer's inputs are the image
    masked, _ = prune(model, amount=0.5, structure=structure, include=filters if structure == "filters" else channels,
                      exclude=exclude)
    before = model_state(masked)
    small, report = shrink(masked, x)
    assert_model_unchanged(masked, before)
    assert not small.training  # mode carried from the input model
    expected = masked(x)
    got = small(x)
    assert got.dtype == dtype
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6 if dtype == torch.float32 else 1e-12)
    assert report and all(r.params_after < r.params_before for r in report)
    assert not any("mask" in k or "orig" in k for k in small.state_dict())
    factor = 0.75 if structure == "filters" else 1.0
    assert tc.count_parameters(small) < factor * tc.count_parameters(model)
    assert tc.model_size_bytes(small) < factor * tc.model_size_bytes(model) < tc.model_size_bytes(masked)
    assert tc.count_parameters(small, nonzero=True) <= tc.count_parameters(masked, nonzero=True)


def test_shrink_report_and_nothing_pruned():
    torch.manual_seed(0)
    model = tc.models.LeNet300100()
    x = torch.randn(2, 784)
    masked, _ = prune(model, amount=100, structure="filters", include="fc1")
    small, report = shrink(masked, x)
    sizes = [(tc.model_size_bytes(nn.Linear(784, 300)), tc.model_size_bytes(small.fc1)),
             (tc.model_size_bytes(nn.Linear(300, 100)), tc.model_size_bytes(small.fc2))]
    assert [str(r) for r in report] == [
        f"fc1: Linear -> Linear, 235500 -> 157000 parameters, {sizes[0][0]:,} -> {sizes[0][1]:,} bytes "
        f"({sizes[0][0] / sizes[0][1]:.2f}x), out 300 -> 200, in 784 -> 784",
        f"fc2: Linear -> Linear, 30100 -> 20100 parameters, {sizes[1][0]:,} -> {sizes[1][1]:,} bytes "
        f"({sizes[1][0] / sizes[1][1]:.2f}x), out 100 -> 100, in 300 -> 200"]
    same, report = shrink(model, x)
    assert report == [] and tc.count_parameters(same) == tc.count_parameters(model)


def test_shrink_keeps_one_channel_when_all_are_pruned():
    torch.manual_seed(0)
    model = tc.models.LeNet300100().double()
    x = torch.randn(3, 784, dtype=torch.float64)
    masked, _ = prune(model, amount=1.0, structure="filters", include="fc2")
    small, _ = shrink(masked, x)
    assert small.fc2.out_features == 1
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-12)


class _Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        h = self.a(x)
        return self.b(h) * self.c(h)


class _Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(torch.relu(self.a(x)))


class _ChannelMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x).mean(1).flatten(1))


@pytest.mark.parametrize(("model", "shape", "match"), [
    (_ChannelMean(), (2, 4, 2, 2), r"mean over spatial dimensions \(2, ...\) only, got dim=\(1,\)"),
    (_Branch(), (2, 4), r"operation 'mul'"),  # the branch is followed; the product of two branches is not
    (nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2)), (2, 4), r"operation '1 \(Sigmoid\)'"),
    (nn.Sequential(nn.Conv2d(4, 4, 1, groups=2), nn.Flatten(), nn.Linear(4, 2)), (2, 4, 1, 1),
     "grouped convolutions"),
    (_Twice(), (2, 4), "module used twice"),
])
def test_shrink_refuses_graphs_it_cannot_follow(model, shape, match):
    with pytest.raises(ValueError, match=match):
        shrink(model, torch.randn(shape))


def test_shrink_bad_input():
    with pytest.raises(TypeError, match="example_input must be a torch.Tensor"):
        shrink(tc.models.LeNet300100(), [1, 2])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        shrink("net", torch.randn(1, 784))


class _LastDim(nn.Module):
    """A Linear over the last dimension of (N, C, L) features: its inputs are not the conv's channels."""

    def __init__(self, length=5):
        super().__init__()
        self.conv, self.fc = nn.Conv1d(2, 4, 1), nn.Linear(length, 3)

    def forward(self, x):
        return self.fc(self.conv(x))


class _LastDimProducer(nn.Module):
    """A Linear on (N, C, L) tokens feeding a Conv1d; L == its outputs, so the shapes alone look like a chain."""

    def __init__(self):
        super().__init__()
        self.fc, self.conv = nn.Linear(4, 4), nn.Conv1d(4, 2, 1)

    def forward(self, x):
        return self.conv(self.fc(x))


class _Transposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv1d(2, 4, 1), nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).transpose(1, 2)).mean(1)


class _ScaledLinear(nn.Linear):
    """A subclass that computes something else than its base: rebuilding it as nn.Linear would change the model."""

    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize(("model", "shape", "match"), [
    (_LastDim(), (2, 2, 5), r"a Linear on \(batch, features\) inputs only: fc \(Linear\) is applied to shape "
                            r"\(2, 4, 5\)"),
    (_LastDim(length=4), (2, 2, 4), r"fc \(Linear\) is applied to shape \(2, 4, 4\)"),
    (_LastDimProducer(), (2, 4, 4), r"fc \(Linear\) is applied to shape \(2, 4, 4\)"),
    (_Transposed(), (2, 2, 6), r"operation 'transpose'"),
    (nn.Sequential(nn.Conv2d(1, 4, 1), nn.Flatten(0, 1), nn.Flatten(), nn.Linear(12, 2)), (2, 1, 4, 3),
     r"cannot follow 1 \(Flatten\): shape \(2, 4, 4, 3\) -> \(8, 4, 3\) mixes channels"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), _ScaledLinear(4, 2)), (2, 4), r"operation '2 \(_ScaledLinear\)'"),
])
def test_shrink_refuses_before_building_anything(model, shape, match):
    torch.manual_seed(0)
    masked, _ = prune(model, amount=0.5, structure="filters", exclude="conv" if isinstance(model, _LastDimProducer)
                      else None)
    with pytest.raises(ValueError, match=match):
        shrink(masked, torch.randn(shape))


class _NormAfterRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.conv2(self.bn(torch.relu(self.conv1(x)))).mean((2, 3))


def test_shrink_a_batchnorm_not_right_after_its_conv():
    torch.manual_seed(0)
    model, x = _random_bn(_NormAfterRelu()).eval(), torch.randn(3, 1, 5, 5)
    masked, report = prune(model, x, amount=2, structure="filters", include="conv1")
    assert report[0].detail["batchnorm"] is None  # not the direct reader: left alone
    small, _ = shrink(masked, x)
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-6)
    with torch.no_grad():  # with beta = 0 and zero running means the channels are dead after the BatchNorm too
        masked.bn.bias.zero_()
        masked.bn.running_mean.zero_()
    small, report = shrink(masked, x)
    assert small.conv1.out_channels == small.bn.num_features == small.conv2.in_channels == 2
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-6)


def test_shrink_a_batchnorm_without_affine_or_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, affine=False, track_running_stats=False),
                          nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Flatten())
    x = torch.randn(3, 1, 3, 3)
    masked, _ = prune(model, x, amount=2, structure="filters", include="0")
    small, _ = shrink(masked, x)
    assert small[1].num_features == 2
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-6)


def test_shrink_only_the_selected_layers():
    torch.manual_seed(0)
    model, x = tc.models.LeNet300100().double(), torch.randn(3, 784, dtype=torch.float64)
    masked, _ = prune(model, amount=0.5, structure="filters", include=["fc1", "fc2"])
    small, report = shrink(masked, x, include="fc1")
    assert [r.name for r in report] == ["fc1", "fc2"]  # fc2 loses the inputs that read fc1's dead neurons
    assert (small.fc1.out_features, small.fc2.in_features, small.fc2.out_features) == (150, 150, 100)
    torch.testing.assert_close(small(x), masked(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="shrink: nothing to act on"):
        shrink(masked, x, exclude="fc*")
    with pytest.raises(ValueError, match=r"include entries \['conv1'\] match no"):
        shrink(masked, x, include="conv1")


def test_shrink_keeps_every_submodules_mode():
    torch.manual_seed(0)
    model, x = _random_bn(tc.models.SmallCNN(input_size=8)).train(), torch.randn(2, 1, 8, 8)
    model.features[1][1].eval()  # a frozen BatchNorm inside a training model, on a resized channel
    masked, _ = prune(model, x, amount=0.5, structure="filters", include="features.*")
    small, report = shrink(masked, x)
    assert "features.1.1" in [r.name for r in report]
    assert {n: m.training for n, m in small.named_modules()} == {n: m.training for n, m in masked.named_modules()}
    assert {n: m.training for n, m in masked.named_modules()} == {n: m.training for n, m in model.named_modules()}
