"""Masks of tc.pruning.prune equal torch.nn.utils.prune's on the same tensors and amounts (ties and rounding
included); N:M keeps exactly n of every m; the model keeps working with PyTorch's pruning tooling."""

import copy

import pytest
import torch
import torch.nn.utils.prune as tprune
from helpers import assert_model_unchanged, model_state
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
    before = model_state(net)
    pruned, _ = prune(net, amount=0.9, scope="global")
    assert_model_unchanged(net, before)
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


class _Swapped(nn.Module):
    """Two conv-BN pairs whose BatchNorms are registered in the other order than the forward pass uses them."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.bn_b = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_a = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x)))))


def _random_affine(model):
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 2, generator=g)
                m.bias.uniform_(0.5, 1, generator=g)
                m.running_mean.uniform_(-1, 1, generator=g)
    return model.eval()


def test_filters_mask_the_batchnorm_that_follows_in_the_forward_not_the_registered_one():
    torch.manual_seed(0)
    model, x = _random_affine(_Swapped()), torch.randn(2, 1, 5, 5)
    pruned, report = prune(model, x, amount=2, structure="filters", include="conv_a")
    dead = pruned.conv_a.weight_mask.flatten(1).amax(1) == 0
    assert int(dead.sum()) == 2 and report[0].detail["batchnorm"] == "bn_a"
    assert torch.equal(pruned.bn_a.weight_mask, (~dead).float()) and not hasattr(pruned.bn_b, "weight_mask")
    h = pruned.bn_a(pruned.conv_a(x))
    assert torch.all(h[:, dead] == 0) and torch.all(h[:, ~dead] != 0)
    with pytest.raises(ValueError, match=r"output of 'conv_a' without following the forward pass: pass example_input"):
        prune(model, amount=2, structure="filters", include="conv_a")


class _Permuted(nn.Module):
    """A chain conv0 -> bn0 -> relu -> conv1 -> bn1 ... whose modules are registered in the order ``order``."""

    def __init__(self, order):
        super().__init__()
        parts = {}
        for i in range(len(order) // 2):
            parts[f"conv{i}"], parts[f"bn{i}"] = nn.Conv1d(1 if i == 0 else 4, 4, 1), nn.BatchNorm1d(4)
        names = sorted(parts)
        for k in order:
            self.add_module(names[k], parts[names[k]])
        self.depth = len(order) // 2

    def forward(self, x):
        for i in range(self.depth):
            x = torch.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return x


@given(order=st.permutations(range(6)), seed=st.integers(0, 2**16))
def test_filters_pair_each_conv_with_its_batchnorm_whatever_the_registration_order(order, seed):
    torch.manual_seed(seed)
    model = _random_affine(_Permuted(order))
    pruned, report = prune(model, torch.randn(2, 1, 3), amount=2, structure="filters")
    assert [r.detail["batchnorm"] for r in sorted(report, key=lambda r: r.name)] == ["bn0", "bn1", "bn2"]
    for i in range(3):
        dead = getattr(pruned, f"conv{i}").weight_mask.flatten(1).amax(1) == 0
        assert torch.equal(getattr(pruned, f"bn{i}").weight_mask, (~dead).to(torch.float32))


class _Shared(nn.Module):
    """conv_a's output is read by a BatchNorm that also normalises conv_b's: masking it would cut conv_b's channels."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.conv_b, self.bn = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv_a(x)) * self.bn(self.conv_b(x))


class _ReadFirst(nn.Module):
    """conv's output is changed in place before the BatchNorm reads it."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x).add_(1))


class _Tokens(nn.Module):
    """A Linear on (N, L, F) tokens with a BatchNorm1d over the L positions, L == F: registered next to each other,
    the BatchNorm's features are not the Linear's outputs."""

    def __init__(self):
        super().__init__()
        self.fc, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

    def forward(self, x):
        return self.bn(self.fc(x))


@pytest.mark.parametrize(("model", "shape", "layer"), [(_Shared(), (2, 1, 3, 3), "conv_a"),
                                                       (_ReadFirst(), (2, 1, 3, 3), "conv"),
                                                       (_Tokens(), (2, 4, 4), "fc")], ids=["shared", "read", "tokens"])
def test_filters_leave_a_batchnorm_they_cannot_prove_is_theirs(model, shape, layer):
    model = _random_affine(model)
    pruned, report = prune(model, torch.randn(shape), amount=2, structure="filters", include=layer)
    assert report[0].detail["batchnorm"] is None and not hasattr(pruned.bn, "weight_mask")


def test_filters_pair_through_sequential_containers_without_example_input():
    # a conv ending an inner Sequential is read by what follows that Sequential in the outer one
    model = _random_affine(nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1)),
                                         nn.Sequential(nn.BatchNorm2d(4), nn.ReLU()), nn.Flatten()))
    pruned, report = prune(model, amount=2, structure="filters")
    assert [r.detail["batchnorm"] for r in report] == [None, "1.0"]  # 0.0 is read by a ReLU: proven BN-less
    traced, _ = prune(model, torch.randn(2, 1, 2, 2), amount=2, structure="filters")
    assert torch.equal(pruned[1][0].weight_mask, traced[1][0].weight_mask)
    linear_bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))  # its input could be (N, L, F): a trace decides
    with pytest.raises(ValueError, match="pass example_input"):
        prune(linear_bn, amount=2, structure="filters")
    _, report = prune(linear_bn, torch.randn(3, 4), amount=2, structure="filters")
    assert report[0].detail["batchnorm"] == "1"
    with pytest.raises(ValueError, match="output of 'conv_b' without following"):  # no Sequential proves conv_b
        prune(_Swapped(), amount=1, structure="filters", include="conv_b")
    _, report = prune(tc.models.LeNet300100(), amount=2, structure="filters")  # no BatchNorm: nothing to find
    assert all(r.detail["batchnorm"] is None for r in report)


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@given(seed=st.integers(0, 2**16), ties=st.booleans(), amount=_amounts, scope=st.sampled_from(["layer", "global"]))
def test_a_tied_weight_gets_one_mask(seed, ties, amount, scope):
    model = _Tied().double()
    with torch.no_grad():
        model.a.weight.copy_(_weights((6, 6), seed, ties))
        model.c.weight.copy_(_weights((3, 6), seed + 1, ties))
    pruned, report = prune(model, amount=amount, scope=scope)
    assert pruned.a.weight_orig is pruned.b.weight_orig and torch.equal(pruned.a.weight_mask, pruned.b.weight_mask)
    assert [r.name for r in report] == ["a", "b", "c"]
    ref = copy.deepcopy(model)  # the reference ranks the shared tensor once
    if scope == "global":
        tprune.global_unstructured([(ref.a, "weight"), (ref.c, "weight")], tprune.L1Unstructured, amount=amount)
    else:
        for layer in (ref.a, ref.c):
            tprune.l1_unstructured(layer, "weight", amount)
    assert torch.equal(pruned.a.weight_mask, ref.a.weight_mask) and torch.equal(pruned.c.weight_mask, ref.c.weight_mask)
    x = torch.randn(2, 6, dtype=torch.float64)
    assert torch.equal(pruned.b(x), torch.nn.functional.linear(x, pruned.a.weight, pruned.b.bias))


class _Embedded(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.head = nn.Embedding(6, 6), nn.Linear(6, 6)
        self.head.weight = self.emb.weight


def test_a_tie_that_cannot_be_kept_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"a.weight is tied to b.weight, which would not be masked"):
        prune(_Tied(), amount=0.5, exclude="b")
    with pytest.raises(ValueError, match=r"head.weight is tied to emb.weight"):
        prune(_Embedded(), amount=0.5)
    model = _Tied()
    before = model_state(model)
    prune(model, amount=0.5, scope="global")
    assert_model_unchanged(model, before)  # the tie included
    assert model.b.weight is model.a.weight and not hasattr(model.a, "weight_mask")


def test_masked_layers_report_their_bytes_growing_and_modes_kept():
    torch.manual_seed(0)
    model = tc.models.SmallCNN(input_size=8).train()
    model.features[0][1].eval()  # a frozen BatchNorm inside a training model
    pruned, report = prune(model, torch.randn(2, 1, 8, 8), amount=0.9, structure="filters")
    for r in report:  # the mask is stored beside the weight: honest bytes grow, parameters fall
        assert r.bytes_after > r.bytes_before and r.compression < 1 and r.params_after < r.params_before
        assert r.bytes_before == tc.model_size_bytes(model.get_submodule(r.name))
        assert r.bytes_after == tc.model_size_bytes(pruned.get_submodule(r.name))
    assert {n: m.training for n, m in pruned.named_modules()} == {n: m.training for n, m in model.named_modules()}
