"""Non-uniform quantizers against closed forms and brute force: power-of-two levels, binary and ternary scales,
k-means (Lloyd's fixed point, scikit-learn's KMeans, better than uniform on trained weights), centroid gradients."""

import copy
import math

import numpy as np
import pytest
import torch
from helpers import assert_model_unchanged, mlp, model_state, randn
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import tensorcompress as tc
from tensorcompress import quantization as Q
from tensorcompress._bits import pack_bits, packed_size, unpack_bits


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_log2_levels_are_nearest_power_of_two_in_the_window(bits, dtype):
    w = randn((400,), bits, dtype=dtype) * 0.1
    out = Q.log2_quantize(w, bits)
    assert out.dtype == dtype and out.shape == w.shape
    e_max = round(math.log2(float(w.abs().max())))
    exps = list(range(e_max - (2 ** (bits - 1) - 2), e_max + 1))
    assert len(exps) == 2 ** (bits - 1) - 1
    levels = torch.tensor([0.0] + [2.0**e for e in exps], dtype=torch.float64)
    assert len(torch.unique(out)) <= 2**bits - 1  # fits in `bits` bits with one code for 0
    # brute force: nearest level in the log domain, 0 when below half the smallest exponent step
    for wi, oi in zip(w.tolist(), out.tolist(), strict=True):
        a = abs(wi)
        e = round(math.log2(a)) if a > 0 else -1000
        want = 0.0 if e < exps[0] else math.copysign(2.0 ** min(e, exps[-1]), wi)
        assert oi == want
    assert set(out.abs().tolist()) <= set(levels.tolist())


def test_binarize_scale_is_the_argmin_by_brute_force(dtype):
    w = randn((30, 7), 3, dtype=dtype)
    wb = Q.binarize(w)
    alpha = float(wb.abs()[0, 0])
    assert alpha == pytest.approx(float(w.abs().mean()), rel=1e-6)
    b = torch.where(w >= 0, 1.0, -1.0).to(dtype)
    grid = torch.linspace(0.5 * alpha, 1.5 * alpha, 2001, dtype=torch.float64)
    errs = torch.stack([((w - a * b) ** 2).sum() for a in grid.to(dtype)])
    assert float(((w - wb) ** 2).sum()) <= float(errs.min()) * (1 + 1e-6)
    # per-channel scales: one per row
    wr = Q.binarize(w, axis=0)
    assert torch.allclose(wr.abs()[:, 0], w.abs().mean(dim=1))
    # any other sign pattern is worse (B = sign(W) is optimal for every alpha > 0)
    flip = b.clone()
    flip[0, 0] *= -1
    assert float(((w - alpha * flip) ** 2).sum()) > float(((w - wb) ** 2).sum())


def test_ternarize_scale_optimal_and_threshold_near_optimal():
    w = randn((200_000,), 4, dtype=torch.float64)
    wt = Q.ternarize(w)
    delta = 0.7 * float(w.abs().mean())
    keep = w.abs() > delta
    assert torch.equal(wt != 0, keep)
    alpha = float(wt.abs().max())
    assert alpha == pytest.approx(float(w.abs()[keep].mean()), rel=1e-12)
    t = torch.sign(w) * keep
    grid = torch.linspace(0.8 * alpha, 1.2 * alpha, 401, dtype=torch.float64)
    assert float(((w - wt) ** 2).sum()) <= min(float(((w - a * t) ** 2).sum()) for a in grid) * (1 + 1e-9)
    # exhaustive search over thresholds: for Gaussian weights the best is Δ ≈ 0.77·mean|w|; at 0.7·mean|w| the
    # population error is 0.75 % above the best (checked by numerical integration), so 1 % bounds it
    mag = w.abs().sort(descending=True).values
    csum = mag.cumsum(0)
    n = torch.arange(1, mag.numel() + 1, dtype=torch.float64)
    best_err = float((w**2).sum() - (csum**2 / n).max())
    assert best_err <= float(((w - wt) ** 2).sum()) <= best_err * 1.01


def _uniform_error(w, bits):
    qp = Q.qparams(w.min(), w.max(), bits=bits)
    return float((Q.fake_quantize(w, qp) - w).pow(2).sum())


def _kmeans_error(w, bits):
    codebook, idx = Q.kmeans_quantize(w, bits)
    return float((codebook[idx.long()] - w).pow(2).sum())


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5])
def test_kmeans_is_a_lloyd_fixed_point(bits, dtype):
    w = randn((50, 20), bits, dtype=dtype) ** 3  # heavy tails
    codebook, idx = Q.kmeans_quantize(w, bits)
    assert codebook.shape == (2**bits,) and idx.dtype == torch.uint8 and idx.shape == w.shape
    assert bool((codebook[1:] >= codebook[:-1]).all())
    # every weight sits at its nearest centroid; every used centroid is the mean of its members
    dist = (w.reshape(-1, 1) - codebook.reshape(1, -1)).abs()
    assert torch.allclose(dist.gather(1, idx.reshape(-1, 1).long()).squeeze(1), dist.min(dim=1).values)
    for k in idx.unique().tolist():
        members = w[idx.long() == k]
        assert float(codebook[k]) == pytest.approx(float(members.mean()), rel=1e-5, abs=1e-6)



def _lloyd_textbook(w, bits, init="linear", seed=0, n_iter_max=100):
    """The oracle: Lloyd's iteration as written first — every value assigned by ``bucketize`` against the
    midpoints, sums by ``index_add_``, counts by ``bincount``, stopped when no assignment changes — from the
    library's own initial codebook (``n_iter_max=0``)."""
    codebook, _ = Q.kmeans_quantize(w, bits, init=init, seed=seed, n_iter_max=0)
    x = w.reshape(-1)
    k = codebook.numel()

    def assign(c):
        return torch.bucketize(x, (c[1:] + c[:-1]) / 2, right=False)

    idx = assign(codebook)
    for _ in range(n_iter_max):
        sums = torch.zeros(k, dtype=x.dtype).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        codebook = torch.where(counts > 0, sums / counts.clamp_min(1), codebook).sort().values
        new = assign(codebook)
        if torch.equal(new, idx):
            break
        idx = new
    return codebook, idx.reshape(w.shape)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 8), st.sampled_from(["linear", "random", "density"]),
       st.sampled_from([torch.float32, torch.float64]), st.sampled_from(["normal", "cubed", "few values", "zeros"]),
       st.integers(0, 40), st.integers(0, 2**31 - 1))
def test_kmeans_by_sorting_equals_the_textbook_iteration(n, bits, init, dtype, values, n_iter_max, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g, dtype=dtype)
    if values == "cubed":  # heavy tails: rare large weights
        w = w**3
    elif values == "few values":  # ties everywhere, and values on the midpoints of their centroids
        w = torch.randint(-3, 4, (n,), generator=g).to(dtype) / 2
    elif values == "zeros":
        w = torch.where(w > 0, w, torch.zeros((), dtype=dtype) * -1)  # +0 and -0 among them
    codebook, idx = Q.kmeans_quantize(w, bits, init=init, seed=seed, n_iter_max=n_iter_max)
    want_codebook, want_idx = _lloyd_textbook(w, bits, init=init, seed=seed, n_iter_max=n_iter_max)
    assert torch.equal(codebook, want_codebook) and torch.equal(idx.long(), want_idx)


def test_kmeans_by_sorting_equals_the_textbook_iteration_on_a_large_layer():
    w = torch.randn(200_000, generator=torch.Generator().manual_seed(3)) ** 3
    for bits in (2, 5):
        codebook, idx = Q.kmeans_quantize(w, bits, n_iter_max=30)
        want_codebook, want_idx = _lloyd_textbook(w, bits, n_iter_max=30)
        assert torch.equal(codebook, want_codebook) and torch.equal(idx.long(), want_idx)


@pytest.mark.parametrize("init", ["random", "density"])
def test_kmeans_other_initialisations_reach_a_lloyd_fixed_point(init):
    w = randn((40, 25), 11, dtype=torch.float64) ** 3
    codebook, idx = Q.kmeans_quantize(w, 3, init=init, seed=4)
    dist = (w.reshape(-1, 1) - codebook.reshape(1, -1)).abs()
    assert torch.allclose(dist.gather(1, idx.reshape(-1, 1).long()).squeeze(1), dist.min(dim=1).values)
    for k in idx.unique().tolist():
        assert float(codebook[k]) == pytest.approx(float(w[idx.long() == k].mean()), rel=1e-9)


def test_kmeans_density_init_starts_at_the_quantiles():
    w = torch.arange(1000, dtype=torch.float64)  # uniform: the quantiles are already a fixed point
    codebook, _ = Q.kmeans_quantize(w, 2, init="density", n_iter_max=0)
    assert codebook.tolist() == [125.0, 375.0, 624.0, 874.0]  # order statistics round((2j+1)/8 * 999)


def test_kmeans_matches_scikit_learn():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    w = randn((3000,), 5, dtype=torch.float64)
    codebook, _ = Q.kmeans_quantize(w, 3)
    init = torch.linspace(float(w.min()), float(w.max()), 8, dtype=torch.float64).reshape(-1, 1).numpy()
    km = sklearn_cluster.KMeans(8, init=init, n_init=1, max_iter=300, tol=0, algorithm="lloyd")
    km.fit(w.reshape(-1, 1).numpy())
    ref = torch.from_numpy(km.cluster_centers_.reshape(-1)).sort().values
    assert torch.allclose(codebook, ref, rtol=1e-9, atol=1e-12)


_TRAINED = {name: p.detach() for name, p in tc.models.pretrained("lenet300100").named_parameters()
            if name.endswith("weight")}  # shipped inside the package


@settings(max_examples=12)  # each example clusters up to 235,500 weights
@given(bits=st.integers(1, 6), name=st.sampled_from(sorted(_TRAINED)))
def test_kmeans_beats_uniform_on_trained_weights(bits, name):
    w = _TRAINED[name]
    assert _kmeans_error(w, bits) <= _uniform_error(w, bits)


def test_centroid_gradient_is_the_sum_of_members():
    w = randn((6, 5), 7, dtype=torch.float64)
    codebook, idx = Q.kmeans_quantize(w, 2)
    cb = codebook.clone().requires_grad_()
    g = randn((6, 5), 8, dtype=torch.float64)
    (cb[idx.long()] * g).sum().backward()
    assert torch.allclose(Q.centroid_gradient(g, idx, 4), cb.grad)


def test_nonuniform_bad_input():
    with pytest.raises(ValueError, match="bits must be >= 2 for log2_quantize"):
        Q.log2_quantize(torch.ones(3), 1)
    with pytest.raises(TypeError, match="w must have a floating point dtype"):
        Q.binarize(torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="w must be finite"):
        Q.ternarize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="threshold must be in"):
        Q.ternarize(torch.ones(3), threshold=1.5)
    with pytest.raises(TypeError, match="threshold must be a real number, got str"):
        Q.ternarize(torch.ones(3), threshold="0.7")
    with pytest.raises(TypeError, match="axis must be an int, got float"):
        Q.binarize(torch.ones(2, 3), axis=1.0)
    with pytest.raises(ValueError, match="axis=2 is out of range for a tensor of order 2"):
        Q.ternarize(torch.ones(2, 3), axis=2)
    with pytest.raises(ValueError, match=r"init must be one of \('linear', 'random', 'density'\)"):
        Q.kmeans_quantize(torch.ones(3), 2, init="kmeans++")
    with pytest.raises(ValueError, match="bits must be between 1 and 16"):
        Q.kmeans_quantize(torch.ones(3), 17)
    with pytest.raises(TypeError, match="n_iter_max must be an int, got float"):
        Q.kmeans_quantize(torch.ones(3), 2, n_iter_max=10.0)
    assert torch.equal(Q.log2_quantize(torch.zeros(4), 3), torch.zeros(4))


@given(bits=st.integers(1, 16), n=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_pack_indices_is_numpy_packbits(bits, n, seed):
    idx = torch.randint(0, 2**bits, (n,), generator=torch.Generator().manual_seed(seed))
    packed = Q.pack_indices(idx, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    # independent reference: each code's bits MSB first, then numpy.packbits over the whole stream
    stream = ((idx.numpy()[:, None] >> np.arange(bits - 1, -1, -1)) & 1).astype(np.uint8).reshape(-1)
    assert np.array_equal(packed.numpy(), np.packbits(stream))
    assert torch.equal(Q.unpack_indices(packed, bits, (n,)), idx)


def _max_and_random(bits):
    top = 2**bits - 1
    return st.lists(st.one_of(st.just(0), st.just(top), st.integers(0, top)), max_size=40)


@given(data=st.data(), bits=st.integers(1, 16))
def test_bits_pack_is_the_concatenated_binary_digits(data, bits):
    values = data.draw(_max_and_random(bits))
    packed = pack_bits(torch.tensor(values, dtype=torch.int64), bits)
    # independent reference: the values' binary digits written out as text, cut into bytes
    digits = "".join(format(v, f"0{bits}b") for v in values)
    digits += "0" * (-len(digits) % 8)
    assert packed.tolist() == [int(digits[i: i + 8], 2) for i in range(0, len(digits), 8)]
    assert packed.numel() == packed_size(len(values), bits)
    assert unpack_bits(packed, bits, len(values)).tolist() == values


def test_pack_indices_device_and_shape(device):
    idx = torch.randint(0, 8, (5, 7), generator=torch.Generator().manual_seed(0)).to(device)
    packed = Q.pack_indices(idx.to(torch.uint8), 3)
    assert packed.device.type == torch.device(device).type and packed.numel() == 14  # ceil(35 * 3 / 8)
    assert torch.equal(Q.unpack_indices(packed, 3, (5, 7)), idx)


def test_pack_indices_bad_input():
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\*\*bits - 1\] = \[0, 3\]"):
        Q.pack_indices(torch.tensor([0, 4]), 2)
    with pytest.raises(TypeError, match="indices must have an integer dtype"):
        Q.pack_indices(torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(TypeError, match="packed must be a uint8 tensor"):
        Q.unpack_indices(torch.tensor([1, 2]), 2, (8,))
    with pytest.raises(ValueError, match=r"packed must hold ceil\(n \* bits / 8\) = 2 bytes"):
        Q.unpack_indices(torch.zeros(3, dtype=torch.uint8), 2, (8,))


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_share_weights_is_kmeans_per_layer_and_leaves_the_input(bits, dtype, device):
    net = mlp(12, 16, 4, seed=0, dtype=dtype).to(device)
    before = model_state(net)
    shared, report = Q.share_weights(net, bits=bits)
    assert_model_unchanged(net, before)
    assert [r.name for r in report] == ["0", "2"]
    for r, name in zip(report, ["0", "2"], strict=True):
        w = net.get_submodule(name).weight.detach()
        codebook, idx = Q.kmeans_quantize(w, bits)
        layer = shared.get_submodule(name)
        assert torch.equal(layer.weight, codebook[idx.long()])
        assert layer.weight.dtype == dtype and layer.weight.device.type == torch.device(device).type
        assert dict(layer.named_parameters()).keys() == {"bias", "parametrizations.weight.original"}
        assert r.params_after == 2**bits + w.shape[0] and r.detail["index_bytes"] == math.ceil(w.numel() * bits / 8)
    x = torch.randn(3, 12, dtype=dtype, device=device)
    assert shared(x).shape == (3, 4)


def test_share_weights_centroids_train_with_the_summed_member_gradients():
    net = mlp(12, 16, 4, seed=0, dtype=torch.float64)
    shared, _ = Q.share_weights(net, bits=2)
    x = torch.randn(8, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # reference: the same network with free (unshared) weights equal to the shared ones
    free = copy.deepcopy(net)
    with torch.no_grad():
        for name in ("0", "2"):
            free.get_submodule(name).weight.copy_(shared.get_submodule(name).weight)
    shared(x).square().sum().backward()
    free(x).square().sum().backward()
    for name in ("0", "2"):
        layer = shared.get_submodule(name)
        idx = layer.parametrizations.weight[0].indices()
        want = Q.centroid_gradient(free.get_submodule(name).weight.grad, idx, 4)
        assert torch.allclose(layer.parametrizations.weight.original.grad, want, rtol=1e-12, atol=1e-12)
    # tc.fit trains exactly the codebooks and biases; the indices stay
    before = {n: shared.get_submodule(n).parametrizations.weight[0].packed.clone() for n in ("0", "2")}
    codebooks = [shared.get_submodule(n).parametrizations.weight.original.detach().clone() for n in ("0", "2")]
    data = torch.utils.data.TensorDataset(x.float(), torch.randint(0, 4, (8,)))
    shared.float()
    tc.fit(shared, data, epochs=2, lr=1e-2, progress=False)
    for n, cb in zip(("0", "2"), codebooks, strict=True):
        layer = shared.get_submodule(n)
        assert torch.equal(layer.parametrizations.weight[0].packed, before[n])
        assert not torch.allclose(layer.parametrizations.weight.original.double(), cb)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_share_weights_keep_zeros_clusters_only_the_kept_weights(dtype, device):
    torch.manual_seed(0)
    pruned, _ = tc.pruning.prune(_Tiny().to(device, dtype), amount=0.5)  # torch.nn.utils.prune masks
    before = model_state(pruned)
    net, report = Q.share_weights(pruned, bits=2, keep_zeros=True)
    assert_model_unchanged(pruned, before)
    assert [r.name for r in report] == ["conv", "fc"]
    for r in report:
        w0 = pruned.get_submodule(r.name).weight.detach()
        w = net.get_submodule(r.name).weight.detach()
        assert w.dtype == dtype and w.device == w0.device
        assert torch.equal(w == 0, w0 == 0)                   # the mask is kept: zeros stay exactly zero
        codebook, idx = Q.kmeans_quantize(w0[w0 != 0], 2)
        assert torch.equal(w[w0 != 0], codebook[idx.long()])  # = k-means on the kept weights only
        sw = net.get_submodule(r.name).parametrizations.weight[0]
        assert torch.equal(sw.mask(), w0 != 0)
        assert r.detail["kept"] == int((w0 != 0).sum()) and r.detail["mask_bytes"] == math.ceil(w0.numel() / 8)
    assert hasattr(pruned.conv, "weight_mask")                # input untouched
    # without keep_zeros the zeros are clustered with the rest: half the weights pull a centroid to 0, and the
    # kept weights share the other three (Han et al.'s reason to cluster the kept weights only)
    dense, _ = Q.share_weights(pruned, bits=2)
    kept = pruned.fc.weight != 0
    err = {m: float((n.fc.weight - pruned.fc.weight).detach()[kept].double().square().sum())
           for m, n in (("dense", dense), ("kept", net))}
    assert err["dense"] > 1.5 * err["kept"]
    # a layer pruned to nothing keeps an all-zero weight
    empty = _Tiny().to(device, dtype)
    with torch.no_grad():
        empty.fc.weight.zero_()
    assert not Q.share_weights(empty, bits=3, keep_zeros=True)[0].fc.weight.any()


@pytest.mark.parametrize("bits", [{"conv": 1, "fc": 3}])
def test_share_weights_bits_per_layer_and_torch_pruned_layers_after_a_forward_pass(bits):
    torch.manual_seed(1)
    net, _ = tc.pruning.prune(_Tiny(), amount=0.6)
    net(torch.randn(1, 2, 6, 6))  # the pruned weight is now a non-leaf tensor, which deepcopy refuses
    shared, report = Q.share_weights(net, bits=bits, keep_zeros=True)
    assert {r.name: r.detail["centroids"] for r in report} == {"conv": 2, "fc": 8}
    for name, b in bits.items():
        w = shared.get_submodule(name).weight
        assert len(torch.unique(w[w != 0])) <= 2**b


def test_keep_zeros_centroid_gradient_skips_the_pruned_positions():
    torch.manual_seed(2)
    pruned, _ = tc.pruning.prune(_Tiny().double(), amount=0.6)
    net, _ = Q.share_weights(pruned, bits=3, keep_zeros=True)
    x = torch.randn(6, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    net(x).square().sum().backward()
    sw = net.fc.parametrizations.weight[0]
    # the same loss through a plain weight gives the members' gradients; their per-centroid sums = eq. 3
    w = net.fc.weight.detach().clone().requires_grad_(True)
    h = torch.relu(net.conv(x)).flatten(1)
    nn.functional.linear(h, w, net.fc.bias).square().sum().backward()
    expected = Q.centroid_gradient(torch.where(sw.mask(), w.grad, 0.0), sw.indices(), 8)
    assert torch.allclose(net.fc.parametrizations.weight.original.grad, expected, rtol=1e-12, atol=1e-12)
    # the unmasked sum differs: pruned positions hold index 0 but must give it no gradient
    assert not torch.allclose(Q.centroid_gradient(w.grad, sw.indices(), 8), expected)


def test_share_weights_state_dict_holds_packed_bytes():
    net = tc.models.pretrained("lenet300100")
    shared, report = Q.share_weights(net, bits=2)
    sd = shared.state_dict()
    packed = [v for k, v in sd.items() if k.endswith("packed")]
    assert [p.dtype for p in packed] == [torch.uint8] * 3
    n_weights = sum(m.weight.numel() for m in net.modules() if isinstance(m, nn.Linear))
    assert sum(p.numel() for p in packed) == sum(r.detail["index_bytes"] for r in report) == n_weights // 4
    payload = n_weights // 4 + 3 * 4 * 4 + sum(m.bias.numel() * 4 for m in net.modules() if isinstance(m, nn.Linear))
    assert payload < tc.model_size_bytes(shared) < payload + 8_000  # the zip/pickle container adds a few kB
    # a fresh copy loads the state and computes the same function
    other, _ = Q.share_weights(net, bits=2)
    with torch.no_grad():
        for m in other.modules():
            if hasattr(m, "parametrizations"):
                m.parametrizations.weight.original.zero_()
    other.load_state_dict(sd)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(other(x), shared(x))


def test_shared_weight_right_inverse_is_the_member_mean():
    layer = nn.Linear(6, 5).double()
    w = layer.weight.detach().clone()
    codebook, idx = Q.kmeans_quantize(w, 2)
    sw = Q.SharedWeight(codebook, idx, 2)
    target = torch.randn(5, 6, dtype=torch.float64)
    cb = sw.right_inverse(target)
    for k in range(4):
        members = target[idx.long() == k]
        want = members.mean() if members.numel() else codebook[k]
        assert float(cb[k]) == pytest.approx(float(want), rel=1e-12)


def test_share_weights_bad_input():
    net = mlp(12, 16, 4, seed=0)
    with pytest.raises(ValueError, match=r"bits must be between 1 and 8 \(one-byte codes\), got 9"):
        Q.share_weights(net, bits=9)
    with pytest.raises(ValueError, match="bits must be between 1 and 8 .*, got 0"):
        Q.share_weights(net, bits=0)
    with pytest.raises(TypeError, match="bits must be an int, got str"):
        Q.share_weights(net, bits="2")
    with pytest.raises(TypeError, match="takes 1 positional argument"):
        Q.share_weights(net, 2)  # bits is keyword-only
    with pytest.raises(ValueError, match="include entries"):
        Q.share_weights(net, bits=2, include="conv*")
    with pytest.raises(ValueError, match="share_weights: nothing to act on"):
        Q.share_weights(net, bits=2, exclude="*")
    with pytest.raises(ValueError, match="init must be one of"):
        Q.share_weights(net, bits=2, init="kmeans++")
    with pytest.raises(ValueError, match=r"index_bits must be between 1 and 8 \(one-byte codes\), got 9"):
        Q.share_weights(net, bits=2, index_bits=9)
    with pytest.raises(TypeError, match="index_bits must be an int, got bool"):
        Q.share_weights(net, bits=2, index_bits=True)
    with pytest.raises(ValueError, match="n_iter_max must be >= 0, got -1"):
        Q.share_weights(net, bits=2, n_iter_max=-1)
    with pytest.raises(ValueError, match=r"bits as a mapping must name every selected layer exactly: unknown \['x'\]"):
        Q.share_weights(net, bits={"0": 2, "2": 2, "x": 2})
    with pytest.raises(ValueError, match=r"bits\['2'\] must be between 1 and 8"):
        Q.share_weights(net, bits={"0": 2, "2": 9})
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        Q.share_weights("net", bits=2)
    shared, _ = Q.share_weights(net, bits=2)
    with pytest.raises(ValueError, match="already has a weight parametrization"):
        Q.share_weights(shared, bits=2)
    idx = torch.zeros(2, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="codebook must be a 1-d tensor with at most 2\\*\\*bits = 4"):
        Q.SharedWeight(torch.zeros(5), idx, 2)
    with pytest.raises(TypeError, match="indices must have an integer dtype"):
        Q.SharedWeight(torch.zeros(4), torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="mask must be None or a bool tensor"):
        Q.SharedWeight(torch.zeros(4), idx, 2, mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask must be None or a bool tensor"):
        Q.SharedWeight(torch.zeros(4), idx, 2, mask=torch.ones(3, 2, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------------------- decode once

def _pruned_shared(dtype=torch.float32):
    net, _ = tc.pruning.prune(mlp(12, 16, 4, seed=0, dtype=dtype), amount=0.5)
    return Q.share_weights(net, bits=3, keep_zeros=True)[0]


def _uncached(layer):
    """codebook[indices] where the mask keeps, 0 elsewhere, from the packed buffers."""
    sw, codebook = layer.parametrizations.weight[0], layer.parametrizations.weight.original
    idx = Q.unpack_indices(sw.packed, sw.bits, sw.shape)
    keep = Q.unpack_indices(sw.packed_mask, 1, sw.shape).bool()
    return torch.where(keep, codebook[idx], torch.zeros((), dtype=codebook.dtype))


def test_shared_weight_is_decoded_once_and_equals_the_uncached_weight(dtype):
    net = _pruned_shared(dtype)
    layer = net[0]
    with torch.no_grad():
        w = layer.weight
        assert layer.weight is w  # the second access returns the decoded weight, not a new decoding
        assert torch.equal(w, _uncached(layer))
    x = randn((5, 12), 12, dtype=dtype)
    with torch.inference_mode():
        y_inf = net(x)
    with torch.no_grad():
        assert torch.equal(net(x), y_inf)


def test_shared_weight_cache_follows_every_change():
    net = _pruned_shared()
    layer = net[0]
    codebook = layer.parametrizations.weight.original
    with torch.no_grad():
        before = layer.weight.clone()
        codebook.mul_(2)  # in place: the version counter moves
        assert torch.equal(layer.weight, 2 * before) and torch.equal(layer.weight, _uncached(layer))
        codebook.data = codebook.data.flip(0).clone()  # new storage under the same Parameter
        assert torch.equal(layer.weight, _uncached(layer))
        layer.weight.mul_(0)  # a change made to the decoded weight itself does not stick
        assert torch.equal(layer.weight, _uncached(layer)) and layer.weight.abs().sum() > 0
    other = _pruned_shared()
    with torch.no_grad():
        other[0].parametrizations.weight.original.copy_(torch.linspace(-1, 1, 8))
        other[0].parametrizations.weight[0].packed.copy_(torch.randint(0, 255, other[0].parametrizations.weight[0]
                                                                       .packed.shape, dtype=torch.uint8))
    net.load_state_dict(other.state_dict())  # new codes, new codebook
    with torch.no_grad():
        assert torch.equal(layer.weight, _uncached(layer)) and torch.equal(layer.weight, other[0].weight)
    copy_ = copy.deepcopy(net).double()
    with torch.no_grad():
        assert copy_[0].weight.dtype == torch.float64 and torch.equal(copy_[0].weight, _uncached(copy_[0]))
        copy_[0].parametrizations.weight.original.zero_()
        assert not torch.equal(layer.weight, copy_[0].weight)  # the copy's cache is its own


def test_shared_weight_gradients_after_cached_forwards():
    torch.manual_seed(1)
    net = _pruned_shared()
    x, y = torch.randn(16, 12), torch.randint(0, 4, (16,))
    with torch.no_grad():
        net(x)  # fills the inference cache
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):  # centroid fine-tuning: each step's gradient is the members' summed gradients
        opt.zero_grad()
        layer = net[0]
        w = _uncached(layer).detach().requires_grad_(True)
        out_ref = net[2](torch.relu(torch.nn.functional.linear(x, w, layer.bias)))
        g_w, = torch.autograd.grad(nn.functional.cross_entropy(out_ref, y), w)
        sw = layer.parametrizations.weight[0]
        want = Q.centroid_gradient(g_w * sw.mask(), sw.indices(), 8)
        nn.functional.cross_entropy(net(x), y).backward()
        assert torch.allclose(layer.parametrizations.weight.original.grad, want, rtol=1e-6, atol=1e-7)
        opt.step()
        with torch.no_grad():  # the step changed the codebook: the cached weight follows
            assert torch.equal(layer.weight, _uncached(layer))


def test_shared_weight_with_an_inference_codebook_decodes_without_caching():
    net = _pruned_shared()
    layer = net[0]
    sw, codebook = layer.parametrizations.weight[0], layer.parametrizations.weight.original
    with torch.inference_mode():
        frozen = codebook.detach().clone() * 3  # an inference tensor: no version counter to watch
    with torch.no_grad():
        want = torch.where(sw.mask(), (3 * codebook)[sw.indices()], torch.zeros(()))
        assert torch.equal(sw(frozen), want) and torch.equal(sw(frozen), want)
        assert "weight" not in sw._cache or sw._cache["weight"][1] is not sw(frozen)
        assert torch.equal(layer.weight, _uncached(layer))  # the parameter's own decoding is unaffected
