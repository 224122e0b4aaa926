"""tensorcompress.metrics on tiny models with hand-computed answers."""

from __future__ import annotations

import io

import matplotlib
import pytest
import torch
from helpers import Sleep, assert_model_unchanged, model_state
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrize, prune
from torch.utils.data import TensorDataset

import tensorcompress as tc

matplotlib.use("Agg")


def test_count_parameters_linear():
    assert tc.count_parameters(nn.Linear(10, 5)) == 10 * 5 + 5 == 55
    shared = nn.Linear(4, 4)
    assert tc.count_parameters(nn.Sequential(shared, shared)) == 20  # shared parameters counted once
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))
        lin.bias.zero_()
    assert tc.count_parameters(lin, nonzero=True) == 3


def test_count_parameters_after_torch_prune():
    torch.manual_seed(0)
    lin = nn.Linear(10, 5)
    prune.l1_unstructured(lin, "weight", amount=0.4)  # 20 of 50 weights masked
    assert tc.count_parameters(lin) == 55  # weight_orig is still a dense parameter
    assert tc.count_parameters(lin, nonzero=True) == int((lin.weight != 0).sum()) + 5 == 35
    size_pruned = tc.model_size_bytes(lin)
    assert size_pruned > tc.model_size_bytes(nn.Linear(10, 5))  # a mask is stored too: not smaller


def test_count_parameters_with_parametrization():
    class ZeroFirstRow(nn.Module):
        def forward(self, w):
            return torch.cat([torch.zeros_like(w[:1]), w[1:]])

    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    parametrize.register_parametrization(lin, "weight", ZeroFirstRow())
    assert tc.count_parameters(lin) == 15
    assert tc.count_parameters(lin, nonzero=True) == 15 - 4


def test_model_size_bytes_is_torch_save_length(tmp_path):
    for model in (nn.Linear(10, 5), tc.models.SmallCNN(input_size=8), nn.Linear(10, 5).double()):
        path = tmp_path / "archive.pt"  # torch.save names the zip records after the file stem; BytesIO: "archive"
        torch.save(model.state_dict(), path)
        assert tc.model_size_bytes(model) == path.stat().st_size
    small, big = nn.Linear(100, 100), nn.Linear(100, 100).double()
    assert tc.model_size_bytes(big) - tc.model_size_bytes(small) == pytest.approx(4 * 10_100, rel=0.05)


def test_flops_hand_computed(device, dtype):
    lin = nn.Linear(10, 5).to(device=device, dtype=dtype)
    assert tc.flops(lin, torch.zeros(1, 10, device=device, dtype=dtype)) == 2 * 10 * 5 == 100
    assert tc.flops(lin, torch.zeros(3, 10, device=device, dtype=dtype)) == 300
    conv = nn.Conv2d(3, 8, 3).to(device=device, dtype=dtype)  # 10x10 -> 8x8 outputs, each 3*3*3 MACs
    assert tc.flops(conv, torch.zeros(1, 3, 10, 10, device=device, dtype=dtype)) == 2 * 8 * 8 * 8 * 3 * 3 * 3


def test_flops_lenet300100_closed_form_and_mode_restored():
    m = tc.models.LeNet300100().train()
    assert tc.flops(m, torch.zeros(1, 1, 28, 28)) == 2 * (784 * 300 + 300 * 100 + 100 * 10)
    assert m.training


def test_latency_measures_without_changing_the_model():
    # a forward pass of at least 5 ms: the median per forward pass is bounded below on any machine, and a measurement
    # that summed its ~10 runs (at least 50 ms) or timed nothing stays outside the band
    m = nn.Sequential(nn.Linear(10, 5), Sleep(0.005)).train()
    before = model_state(m)
    lat = tc.latency(m, torch.zeros(1, 10), min_run_time=0.05)
    assert isinstance(lat, tc.Latency) and 0.005 <= lat.median < 0.045 and lat.runs >= 1
    assert lat.device == "cpu" and lat.threads == 1 and "ms" in str(lat)
    assert_model_unchanged(m, before)
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        tc.latency(m, torch.zeros(1, 10), threads=0)
    with pytest.raises(TypeError, match="example_input must be a torch.Tensor, got list"):
        tc.latency(m, [0.0] * 10)


def test_a_pruned_model_after_a_forward_pass_is_measured():
    # torch.nn.utils.prune makes `weight` a non-leaf tensor at each forward, which copy.deepcopy refuses
    m, _ = tc.pruning.prune(nn.Sequential(nn.Linear(10, 5), Sleep(0.002)), amount=0.5)
    m(torch.zeros(1, 10))
    before = model_state(m)
    assert tc.latency(m, torch.zeros(1, 10), min_run_time=0.02).median >= 0.002
    assert_model_unchanged(m, before)  # still pruned: mask and original weight as they were
    data = TensorDataset(torch.randn(4, 10), torch.arange(4))
    entry = tc.Leaderboard(data, measure_latency=False).add("masked", m, family="pruned")
    assert entry.nonzero_params == 25 + 5 and entry.params == 55
    assert torch.equal(m[0].weight, m[0].weight_orig * m[0].weight_mask)  # still pruned through torch's hooks


def test_latency_on_device(device):
    lat = tc.latency(nn.Sequential(nn.Linear(10, 5), Sleep(0.002)), torch.zeros(1, 10), device=device,
                     min_run_time=0.02)
    assert lat.median >= 0.002 and lat.device == str(torch.device(device))



def test_metrics_bad_input():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got Tensor"):
        tc.count_parameters(torch.zeros(3))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got dict"):
        tc.model_size_bytes({})


def test_model_size_bytes_counts_buffers():
    bn = nn.BatchNorm1d(100)  # 200 parameters, 201 buffer entries (running mean/var, num_batches_tracked)
    buf = io.BytesIO()
    torch.save({k: v for k, v in bn.state_dict().items() if k in ("weight", "bias")}, buf)
    assert tc.model_size_bytes(bn) > buf.getbuffer().nbytes + 4 * 200


# ---------------------------------------------------------------- properties over layer shapes

@given(n=st.integers(1, 12), m=st.integers(1, 12), batch=st.integers(1, 4), bias=st.booleans())
def test_linear_counts_property(n, m, batch, bias):
    lin = nn.Linear(n, m, bias=bias)
    assert tc.count_parameters(lin) == n * m + (m if bias else 0)
    assert tc.flops(lin, torch.zeros(batch, n)) == 2 * batch * n * m
    buf = io.BytesIO()
    torch.save(lin.state_dict(), buf)
    assert tc.model_size_bytes(lin) == len(buf.getvalue())


@given(c_in=st.integers(1, 4), c_out=st.integers(1, 4), k=st.integers(1, 3), size=st.integers(3, 7),
       stride=st.integers(1, 2), padding=st.integers(0, 1))
def test_conv_flops_property(c_in, c_out, k, size, stride, padding):
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding)
    out = (size + 2 * padding - k) // stride + 1
    assert tc.count_parameters(conv) == c_out * c_in * k * k + c_out
    assert tc.flops(conv, torch.zeros(1, c_in, size, size)) == 2 * c_out * out * out * c_in * k * k


@given(amount=st.floats(0.0, 1.0), seed=st.integers(0, 100))
def test_nonzero_count_matches_torch_prune_property(amount, seed):
    torch.manual_seed(seed)
    lin = nn.Linear(8, 6)
    prune.random_unstructured(lin, "weight", amount=amount)
    expected = int(torch.count_nonzero(lin.weight_orig * lin.weight_mask)) + int(torch.count_nonzero(lin.bias))
    assert tc.count_parameters(lin, nonzero=True) == expected
    assert tc.count_parameters(lin) == 54


# ---------------------------------------------------------------- what flops counts (as notebook 02 states it)


def test_flops_count_only_matmul_and_convolution_multiply_adds():
    """2 x MACs of convolutions and matrix products; bias, BatchNorm, activations, pooling and softmax count 0."""
    conv = nn.Conv2d(3, 4, 3, padding=1)  # 6x6 -> 6x6, padding counted as full kernels
    full = nn.Sequential(conv, nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 5),
                         nn.Softmax(dim=1))
    macs = 6 * 6 * 4 * 3 * 3 * 3 + 36 * 5
    x = torch.randn(2, 3, 6, 6)
    assert tc.flops(full, x) == 2 * 2 * macs
    bare = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Unflatten(1, (4, 6, 6)),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(36, 5, bias=False))
    assert tc.flops(bare, x) == tc.flops(full, x)  # dropping bias/BN/activation/softmax changes nothing


def test_flops_of_grouped_transposed_and_einsum():
    depthwise = nn.Conv2d(4, 4, 3, groups=4, bias=False)  # each output channel sees one input channel
    assert tc.flops(depthwise, torch.zeros(1, 4, 5, 5)) == 2 * 3 * 3 * 4 * 3 * 3
    transposed = nn.ConvTranspose2d(2, 3, 2, bias=False)  # counted over input positions
    assert tc.flops(transposed, torch.zeros(1, 2, 4, 4)) == 2 * 4 * 4 * 2 * 3 * 2 * 2

    class Contract(nn.Module):
        def forward(self, a):
            return torch.einsum("bij,jk->bik", a, torch.ones(5, 6))

    assert tc.flops(Contract(), torch.zeros(2, 3, 5)) == 2 * 2 * 3 * 5 * 6


# ---------------------------------------------------------------- how numbers are printed and drawn


def test_latency_prints_an_iqr_not_a_plus_minus():
    lat = tc.Latency(median=1.23456e-3, iqr=5e-5, runs=25, device="cpu", threads=1)
    assert str(lat) == "1.235 ms (IQR 0.050 ms, 25 runs, cpu)"
    assert "±" not in str(lat)


def _board(sizes):
    board = tc.Leaderboard(TensorDataset(torch.zeros(1, 2), torch.zeros(1)), measure_latency=False)
    for i, b in enumerate(sizes):
        board.add_entry(tc.Entry(f"m{i}", "x", (0.9 - 0.01 * i,), b))
    return board


@pytest.mark.parametrize("sizes", [
    [1_072_000, 2_143_000, 1_072_100],  # notebook 02: dense, masked (2x the bytes), retrained
    [1_100_000, 1_150_000],
    [999_000, 1_001_000],
    [5_000, 9_000],
    [300_000, 1_000_000],
    [1_000, 10_000_000_000],
], ids=lambda s: f"{min(s)}-{max(s)}")
def test_plot_tick_labels_are_few_exact_and_apart(sizes):
    import matplotlib.pyplot as plt

    ax = _board(sizes).plot()
    try:
        fig = ax.figure
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        lo, hi = ax.get_xlim()
        assert lo <= min(sizes) and max(sizes) <= hi  # every model is in view
        ticks = [(t, label) for t, label in zip(ax.get_xticks(), ax.get_xticklabels(), strict=True)
                 if lo <= t <= hi and label.get_visible() and label.get_text()]
        assert 2 <= len(ticks) <= 6
        assert not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]  # no minor labels
        scale = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}
        for t, label in ticks:  # each label states its tick's position
            value, unit = label.get_text().split()
            assert float(value) * scale[unit] == pytest.approx(t, rel=1e-9)
        boxes = [label.get_window_extent(renderer) for _, label in ticks]
        for a, b in zip(boxes, boxes[1:], strict=False):
            assert a.x1 < b.x0, "x tick labels overlap"
    finally:
        plt.close(ax.figure)


# ---------------------------------------------------------------- perplexity


def _hand_nll(model, tokens, context):
    """Token by token: token t (t >= 1) is predicted from its window's tokens before it, the windows starting at
    0, context, 2 context, ... (mean negative log-likelihood, float64)."""
    total = 0.0
    for t in range(1, tokens.numel()):
        start = (t - 1) // context * context
        logits = model(tokens[start:t][None])[0, -1].double()
        total -= float(torch.log_softmax(logits, -1)[tokens[t]])
    return total / (tokens.numel() - 1)


@pytest.mark.parametrize(("n", "context", "batch_size"), [(45, 8, 3), (41, 8, 32), (9, 8, 1), (2, 16, 4)])
def test_perplexity_equals_a_token_by_token_computation(n, context, batch_size):
    import math

    torch.manual_seed(0)
    model = tc.models.TinyGPT(13, d_model=64, n_layers=1, n_heads=2, context=16).eval()
    tokens = torch.randint(0, 13, (n,), generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        expected = _hand_nll(model, tokens, context)
    model.train()
    ppl = tc.metrics.perplexity(model, tokens, context=context, batch_size=batch_size)
    assert model.training  # mode restored
    assert ppl == pytest.approx(math.exp(expected), rel=1e-5)
    bpc = tc.metrics.bits_per_character(model, tokens, context=context, batch_size=batch_size)
    assert bpc == pytest.approx(expected / math.log(2), rel=1e-5) and bpc == pytest.approx(math.log2(ppl), rel=1e-9)


def test_perplexity_default_context_is_the_models():
    torch.manual_seed(0)
    model = tc.models.TinyGPT(13, d_model=64, n_layers=1, n_heads=2, context=8)
    tokens = torch.randint(0, 13, (50,), generator=torch.Generator().manual_seed(0))
    assert tc.metrics.perplexity(model, tokens) == tc.metrics.perplexity(model, tokens, context=8)
    assert tc.metrics.perplexity(model, tokens) != tc.metrics.perplexity(model, tokens, context=4)


class _Uniform(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, tokens):
        return self.w.expand(*tokens.shape, self.vocab)


def test_uniform_model_has_perplexity_vocab_size():
    tokens = torch.randint(0, 103, (1001,), generator=torch.Generator().manual_seed(0))
    assert tc.metrics.perplexity(_Uniform(103), tokens, context=64) == pytest.approx(103, rel=1e-12)
    assert tc.metrics.bits_per_character(_Uniform(128), tokens, context=64) == pytest.approx(7, rel=1e-12)


def test_perplexity_bad_input():
    model = _Uniform(5)
    tokens = torch.tensor([1, 2, 3])
    with pytest.raises(ValueError, match="context must be given: _Uniform has no `context` attribute"):
        tc.metrics.perplexity(model, tokens)
    with pytest.raises(ValueError, match=r"at least 2 tokens .*got shape \(1,\)"):
        tc.metrics.perplexity(model, tokens[:1], context=4)
    with pytest.raises(ValueError, match=r"tokens must be 1-D .*got shape \(1, 3\)"):
        tc.metrics.perplexity(model, tokens[None], context=4)
    with pytest.raises(TypeError, match="tokens must be an integer torch.Tensor, got a tensor of dtype torch.float32"):
        tc.metrics.perplexity(model, tokens.float(), context=4)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        tc.metrics.perplexity(model, tokens, context=4, batch_size=0)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        tc.metrics.perplexity("gpt", tokens, context=4)
    with torch.no_grad():
        model.w.fill_(float("nan"))
    with pytest.raises(ValueError, match="cross-entropy on tokens is nan"):
        tc.metrics.bits_per_character(model, tokens, context=4)
