"""Non-uniform quantizers against closed forms and brute force: power-of-two levels, binary and ternary scales,
k-means (Lloyd's fixed point, scikit-learn's KMeans, better than uniform on trained weights), centroid gradients."""

import math

import pytest
import torch

import tensorcompress as tc
from tensorcompress import quantization as Q
from tests.conftest import randn


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


def test_kmeans_matches_scikit_learn():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    w = randn((3000,), 5, dtype=torch.float64)
    codebook, _ = Q.kmeans_quantize(w, 3)
    init = torch.linspace(float(w.min()), float(w.max()), 8, dtype=torch.float64).reshape(-1, 1).numpy()
    km = sklearn_cluster.KMeans(8, init=init, n_init=1, max_iter=300, tol=0, algorithm="lloyd")
    km.fit(w.reshape(-1, 1).numpy())
    ref = torch.from_numpy(km.cluster_centers_.reshape(-1)).sort().values
    assert torch.allclose(codebook, ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_beats_uniform_on_trained_weights(bits):
    net = tc.models.pretrained("lenet300100")  # shipped inside the package
    for name, p in net.named_parameters():
        if name.endswith("weight"):
            assert _kmeans_error(p.detach(), bits) <= _uniform_error(p.detach(), bits), name


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
    with pytest.raises(ValueError, match="init must be 'linear' or 'random'"):
        Q.kmeans_quantize(torch.ones(3), 2, init="kmeans++")
    with pytest.raises(ValueError, match="bits must be between 1 and 16"):
        Q.kmeans_quantize(torch.ones(3), 17)
    assert torch.equal(Q.log2_quantize(torch.zeros(4), 3), torch.zeros(4))
