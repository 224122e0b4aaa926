"""Masks of tc.pruning.prune equal torch.nn.utils.prune's on the same tensors and amounts (ties and rounding
included); N:M keeps exactly n of every m; the model keeps working with PyTorch's pruning tooling."""

import copy

import pytest
import torch
import torch.nn.utils.prune as tprune
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc
from tensorcompress.pruning import nm_mask, prune


def _weights(shape, seed, ties):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct magnitudes: many ties, which topk must break as torch's does
        return torch.randint(-3, 4, shape, generator=g).double()
    return torch.randn(shape, generator=g, dtype=torch.float64)


_amounts = st.one_of(st.sampled_from([0.0, 0.5, 0.25, 0.125, 1.0, 0.3, 0.7]),
                     st.floats(0.0, 1.0, allow_nan=False), st.integers(0, 6))
_shapes = st.tuples(st.integers(1, 7), st.integers(1, 9))


def _amount_for(amount, size):
    return min(amount, size) if isinstance(amount, int) else amount


@given(shape=_shapes, seed=st.integers(0, 2**16), ties=st.booleans(), amount=_amounts)
def test_layer_unstructured_equals_l1_unstructured(shape, seed, ties, amount):
    lin = nn.Linear(shape[1], shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(_weights(shape, seed, ties))
    amount = _amount_for(amount, lin.weight.numel())
    ref = tprune.l1_unstructured(copy.deepcopy(lin), "weight", amount)
    ours, report = prune(nn.Sequential(lin), amount=amount)
    assert torch.equal(ours[0].weight_mask, ref.weight_mask)
    assert report[0].detail["sparsity"] == pytest.approx(float((ref.weight_mask == 0).double().mean()), abs=1e-4)


@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 3)), seed=st.integers(0, 2**16),
       ties=st.booleans(), amount=_amounts, structure=st.sampled_from(["filters", "channels"]),
       n=st.sampled_from([1, 2, float("inf")]))
def test_structured_equals_ln_structured(shape, seed, ties, amount, structure, n):
    conv = nn.Conv1d(shape[1], shape[0], shape[2], bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(_weights(conv.weight.shape, seed, ties))
    dim = {"filters": 0, "channels": 1}[structure]
    amount = _amount_for(amount, conv.weight.shape[dim])
    ref = tprune.ln_structured(copy.deepcopy(conv), "weight", amount, n=n, dim=dim)
    ours, _ = prune(nn.Sequential(conv), amount=amount, structure=structure, norm=n)
    assert torch.equal(ours[0].weight_mask, ref.weight_mask)


@given(shapes=st.lists(_shapes, min_size=1, max_size=3), seed=st.integers(0, 2**16), ties=st.booleans(),
       amount=_amounts)
def test_global_equals_global_unstructured(shapes, seed, ties, amount):
    net = nn.Sequential(*[nn.Linear(s[1], s[0], bias=False).double() for s in shapes])
    with torch.no_grad():
        for k, layer in enumerate(net):
            layer.weight.copy_(_weights(layer.weight.shape, seed + k, ties))
    amount = _amount_for(amount, sum(layer.weight.numel() for layer in net))
    ref = copy.deepcopy(net)
    tprune.global_unstructured([(layer, "weight") for layer in ref], tprune.L1Unstructured, amount=amount)
    ours, _ = prune(net, amount=amount, scope="global")
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a.weight_mask, b.weight_mask)


@given(rows=st.integers(1, 5), groups=st.integers(1, 4), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4),
                                                                             (4, 8), (4, 4)]),
       seed=st.integers(0, 2**16), ties=st.booleans(), conv=st.booleans())
def test_nm_mask_keeps_exactly_n_largest(rows, groups, nm, seed, ties, conv):
    n, m = nm
    shape = (rows, groups * m, 2, 1) if conv else (rows, groups * m)
    w = _weights(shape, seed, ties)
    mask = nm_mask(w, n, m)
    # groups of m consecutive weights along the input dimension
    gm, gw = mask.movedim(1, -1).reshape(-1, m), w.abs().movedim(1, -1).reshape(-1, m)
    assert torch.equal(gm.sum(1), torch.full((gm.shape[0],), float(n), dtype=gm.dtype))
    kept = torch.where(gm.bool(), gw, torch.inf).amin(1)
    dropped = torch.where(gm.bool(), -torch.inf, gw).amax(1)
    assert bool((kept >= dropped).all())


def test_prune_nm_on_a_model_and_amount_rule():
    net = tc.models.LeNet5()
    ours, report = prune(net, amount=None, structure=(2, 4), exclude="conv1")
    assert [r.name for r in report] == ["conv2", "fc1", "fc2"]
    assert all(r.detail["sparsity"] == 0.5 for r in report)
    prune(net, amount=0.5, structure=(2, 4), include="fc2")
    with pytest.raises(ValueError, match=r"amount must be None \(or 0.5\) for an 2:4 structure"):
        prune(net, amount=0.3, structure=(2, 4), include="fc2")
    with pytest.raises(ValueError, match="must be a multiple of m=4"):
        prune(net, amount=None, structure=(2, 4), include="conv1")


def test_model_keeps_working_with_pytorch_tooling(dtype, device):
    torch.manual_seed(0)
    net = tc.models.LeNet300100().to(device=device, dtype=dtype)
    before = copy.deepcopy(net.state_dict())
    pruned, _ = prune(net, amount=0.9, scope="global")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # input untouched
    assert not tprune.is_pruned(net) and tprune.is_pruned(pruned)
    assert {"fc1.weight_orig", "fc1.weight_mask"} <= set(pruned.state_dict())
    x = torch.randn(4, 784, device=device, dtype=dtype)
    pruned(x).sum().backward()  # grads flow to weight_orig, masked entries get zero gradient
    assert torch.all(pruned.fc1.weight_orig.grad[pruned.fc1.weight_mask == 0] == 0)
    again, _ = prune(pruned, amount=0.95, scope="global")  # deep-copies a model that ran forward/backward
    for layer in ("fc1", "fc2", "fc3"):  # pruned weights stay pruned
        assert bool((getattr(again, layer).weight_mask <= getattr(pruned, layer).weight_mask).all())
    total = sum(getattr(again, n).weight.numel() for n in ("fc1", "fc2", "fc3"))
    zeros = sum(int((getattr(again, n).weight == 0).sum()) for n in ("fc1", "fc2", "fc3"))
    assert zeros == round(0.95 * total)
    out = again(x)
    for layer in ("fc1", "fc2", "fc3"):
        tprune.remove(getattr(again, layer), "weight")
    assert torch.equal(again(x), out)
    assert "fc1.weight" in again.state_dict() and "fc1.weight_mask" not in again.state_dict()


def test_filters_mask_bias_and_batchnorm_so_channels_are_zero():
    torch.manual_seed(0)
    net = tc.models.SmallCNN(input_size=8).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics and affine
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    pruned, report = prune(net, amount=0.5, structure="filters", include="features.*")
    conv, bn = pruned.features[0][0], pruned.features[0][1]
    dead = conv.weight_mask.flatten(1).amax(1) == 0
    assert int(dead.sum()) == 16
    assert torch.equal(bn.weight_mask, (~dead).float()) and torch.equal(bn.bias_mask, (~dead).float())
    out = pruned.features[0][:2](torch.randn(3, 1, 8, 8))
    assert torch.all(out[:, dead] == 0) and torch.all(out[:, ~dead] != 0)
    lenet, _ = prune(tc.models.LeNet300100(), amount=0.5, structure="filters", include="fc1")
    assert torch.equal(lenet.fc1.bias_mask, lenet.fc1.weight_mask[:, 0])


def test_taylor_and_callable_criteria():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 4))
    with pytest.raises(ValueError, match="taylor needs a gradient"):
        prune(net, amount=0.5, criterion="taylor")
    net(torch.randn(5, 6)).pow(2).sum().backward()
    ours, _ = prune(net, amount=0.5, criterion="taylor")
    scores = (net[0].weight * net[0].weight.grad).abs()
    ref = tprune.l1_unstructured(copy.deepcopy(net[0]), "weight", 0.5, importance_scores=scores)
    assert torch.equal(ours[0].weight_mask, ref.weight_mask)
    inverse, _ = prune(net, amount=0.5, criterion=lambda m: -m.weight.abs())  # keeps the small ones
    assert torch.equal(inverse[0].weight_mask, 1 - tprune.l1_unstructured(copy.deepcopy(net[0]), "weight",
                                                                            0.5).weight_mask)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"amount": 1.5}, ValueError, r"amount must be a fraction in \[0, 1\], got 1.5"),
    ({"amount": -0.1}, ValueError, r"amount must be a fraction in \[0, 1\]"),
    ({"amount": float("nan")}, ValueError, r"amount must be finite"),
    ({"amount": 10**6}, ValueError, r"amount must be between 0 and 24 \(a count of the prunable units\), got 1000000"),
    ({"amount": -1}, ValueError, r"amount must be between 0 and 24"),
    ({"amount": "half"}, TypeError, "amount must be an int"),
    ({"amount": True}, TypeError, "amount must be an int"),
    ({"amount": None}, ValueError, "amount must be given"),
    ({"amount": 0.5, "criterion": "random"}, ValueError, "criterion must be one of"),
    ({"amount": 0.5, "scope": "net"}, ValueError, "scope must be 'layer' or 'global'"),
    ({"amount": 0.5, "structure": "rows"}, ValueError, "structure must be None, 'filters', 'channels'"),
    ({"amount": None, "structure": (4, 2)}, ValueError, r"needs n <= m, got \(4, 2\)"),
    ({"amount": 0.5, "include": "conv*"}, ValueError, "match no"),
    ({"amount": 0.5, "exclude": "*"}, ValueError, "prune: nothing to act on"),
    ({"amount": 0.5, "structure": "filters", "example_input": [1.0]}, TypeError, "example_input must be a"),
])
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        prune(nn.Sequential(nn.Linear(4, 6)), **kwargs)


def test_bad_input_other():
    with pytest.raises(ValueError, match="prune: nothing to act on, the model has no Linear"):
        prune(nn.Sequential(nn.ReLU()), amount=0.5)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        prune("net", amount=0.5)
    with pytest.raises(ValueError, match="n must be <= m"):
        nm_mask(torch.randn(3, 4), 3, 2)
