"""The course's one protocol: the shared splits, the stored baseline scores, the fidelity measures that tell methods
apart, and exercises that may not call the library function they ask the reader to write."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tensorcompress as tc
from tests.helpers import assert_model_unchanged, mlp, model_state, random_classification

# ---------------------------------------------------------------- splits and baselines


@pytest.mark.parametrize("name, sizes", [("mnist_sample", (4000, 500, 500)), ("digits", (1437, 180, 180))])
def test_load_splits_halves_the_held_out_images(name, sizes):
    splits = tc.data.load_splits(name)
    assert tuple(len(s) for s in splits) == sizes
    loader = {"mnist_sample": tc.data.load_mnist_sample, "digits": tc.data.load_digits}[name]
    train, heldout = loader()
    test, val = tc.data.train_val_split(heldout, sizes[1], seed=0)  # the construction notebook 07 explains
    for mine, ref in ((splits.train, train), (splits.val, val), (splits.test, test)):
        assert all(torch.equal(a, b) for a, b in zip(mine.tensors, ref.tensors, strict=True))
    # disjoint halves that together are the held-out split, every class on both sides
    assert set(splits.val.tensors[1].tolist()) == set(splits.test.tensors[1].tolist()) == set(range(10))
    both = torch.cat([splits.val.tensors[0], splits.test.tensors[0]]).flatten(1)
    assert torch.unique(both, dim=0).shape[0] == torch.unique(heldout.tensors[0].flatten(1), dim=0).shape[0]


def test_load_splits_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="name must be one of"):
        tc.data.load_splits("cifar10")


@pytest.mark.parametrize("name", ["lenet300100", "lenet5", "smallcnn", "resnet8", "mobilenetv2_tiny"])
def test_stored_baseline_scores_are_the_checkpoints_scores(name):
    dataset = tc.models.manifest()[name]["dataset"]
    splits = tc.data.load_splits(dataset)
    model = tc.models.pretrained(name)
    for part in ("val", "test"):
        stored = tc.models.baseline(name, part)
        ev = tc.evaluate(model, getattr(splits, part))
        assert stored.n == ev.n == len(getattr(splits, part))
        assert stored.accuracy == ev.accuracy  # a count of images: exact on any CPU
        assert stored.loss == pytest.approx(ev.loss, abs=2e-6)


def test_baseline_rejects_unknown_names_and_splits():
    with pytest.raises(ValueError, match="name must be one of"):
        tc.models.baseline("resnet1000")
    with pytest.raises(ValueError, match="split must be one of"):
        tc.models.baseline("lenet5", "train")


# ---------------------------------------------------------------- fidelity


def _reference_fidelity(p: nn.Module, q: nn.Module, data: TensorDataset) -> dict:
    """The four measures written out with PyTorch's own kl_div and cross_entropy, in float64."""
    x, y = data.tensors
    with torch.no_grad():
        lp = torch.log_softmax(p(x.to(next(p.parameters()).dtype)).double(), 1)
        lq = torch.log_softmax(q(x.to(next(q.parameters()).dtype)).double(), 1)
    return {"accuracy": float((lq.argmax(1) == y).double().mean()),
            "cross_entropy": float(nn.functional.cross_entropy(lq, y)),
            "kl": float(nn.functional.kl_div(lq, lp, log_target=True, reduction="batchmean")),
            "agreement": float((lq.argmax(1) == lp.argmax(1)).double().mean())}


@pytest.mark.parametrize("batch_size", [1000, 7])
def test_fidelity_equals_pytorch_kl_div_and_cross_entropy(batch_size):
    data = random_classification(60, 5, 4, seed=0)
    p, q = mlp(5, 16, 4, seed=0), mlp(5, 16, 4, seed=1)
    got = tc.metrics.fidelity(p, q, data, batch_size=batch_size)
    ref = _reference_fidelity(p, q, data)
    assert got.n == 60
    for key, value in got.as_dict().items():
        assert value == pytest.approx(ref[key], rel=1e-12, abs=1e-14), key


def test_fidelity_of_a_network_against_itself_is_exact():
    data = random_classification(50, 5, 3, seed=2)
    p = mlp(5, 8, 3, seed=3)
    f = tc.metrics.fidelity(p, p, data)
    assert f.kl == 0.0 and f.agreement == 1.0
    assert f.cross_entropy == pytest.approx(tc.evaluate(p, data).loss, rel=1e-6)


def test_fidelity_follows_each_models_device_and_dtype(device):
    data = random_classification(40, 5, 3, seed=4)
    p = mlp(5, 8, 3, seed=5).to(device)
    q = mlp(5, 8, 3, seed=6, dtype=torch.float64).to(device)
    ref = _reference_fidelity(p.cpu(), q.cpu(), data)
    got = tc.metrics.fidelity(p.to(device), q.to(device), DataLoader(data, batch_size=16))
    assert got.kl == pytest.approx(ref["kl"], rel=1e-5)


def test_fidelity_leaves_models_untouched_and_modes_restored():
    data = random_classification(30, 5, 3, seed=7)
    p, q = mlp(5, 8, 3, seed=8, dropout=0.5), mlp(5, 8, 3, seed=9)
    p.train()
    before = model_state(p)
    tc.metrics.fidelity(p, q, data)
    assert_model_unchanged(p, before)
    assert p.training and q.training


def test_fidelity_rejects_bad_input():
    data = random_classification(10, 5, 3, seed=0)
    p = mlp(5, 8, 3, seed=0)
    with pytest.raises(TypeError, match="model must be"):
        tc.metrics.fidelity(p, "q", data)
    with pytest.raises(ValueError, match="same classes"):
        tc.metrics.fidelity(p, mlp(5, 8, 4, seed=0), data)
    with pytest.raises(ValueError, match="at least one"):
        tc.metrics.fidelity(p, p, TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)))
    with pytest.raises(TypeError, match="labelled"):
        tc.metrics.fidelity(p, p, [torch.zeros(4, 5)])
    bad = mlp(5, 8, 3, seed=0)
    with torch.no_grad():
        bad[2].bias.fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        tc.metrics.fidelity(p, bad, data)
    with pytest.raises(ValueError, match="batch_size"):
        tc.metrics.fidelity(p, p, data, batch_size=0)


finite = st.floats(-1e6, 1e6, allow_nan=False)


@given(st.lists(finite, min_size=2, max_size=5), st.lists(finite, min_size=2, max_size=5))
def test_separated_means_the_intervals_do_not_overlap(a, b):
    sa = tc.metrics.SeedStats.from_values(a, range(len(a)))
    sb = tc.metrics.SeedStats.from_values(b, range(len(b)))
    lo_a, hi_a, lo_b, hi_b = sa.mean - sa.std, sa.mean + sa.std, sb.mean - sb.std, sb.mean + sb.std
    overlap = max(lo_a, lo_b) <= min(hi_a, hi_b)
    assert tc.metrics.separated(sa, sb) is (not overlap) is tc.metrics.separated(sb, sa)


def test_separated_on_hand_made_intervals():
    s = tc.metrics.SeedStats
    assert tc.metrics.separated(s(1.0, 0.1, (), ()), s(1.3, 0.1, (), ()))
    assert not tc.metrics.separated(s(1.0, 0.1, (), ()), s(1.2, 0.1, (), ()))  # touching
    assert not tc.metrics.separated(s(1.0, 0.0, (), ()), s(1.0, 0.0, (), ()))
    with pytest.raises(TypeError, match="SeedStats"):
        tc.metrics.separated(1.0, s(1.0, 0.1, (), ()))


# ---------------------------------------------------------------- forbidden library functions in exercises


def _by_name(x):
    return tc.cp_als(x, 2)


def _by_module(x):
    return tc.decompositions.cp.cp_als(x, 2)


def _allowed(x):
    return tc.unfold(x, 0)


@pytest.mark.parametrize("candidate", [_by_name, _by_module])
def test_call_without_refuses_a_forbidden_function_however_it_is_reached(candidate):
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    with pytest.raises(tc.exercises.ExerciseError, match=r"Exercise 4\.1: your answer called .*cp_als"):
        tc.exercises.call_without("4.1", [tc.cp_als], candidate, x)
    assert tc.cp_als is tc.decompositions.cp.cp_als  # restored
    assert isinstance(candidate(x), tc.CPTensor)


def test_call_without_patches_names_imported_into_the_candidates_globals():
    namespace = {"cp_als": tc.cp_als}
    exec("def answer(x):\n    return cp_als(x, 2)\n", namespace)
    with pytest.raises(tc.exercises.ExerciseError):
        tc.exercises.call_without("4.1", [tc.cp_als], namespace["answer"], torch.randn(3, 4, 5))
    assert namespace["cp_als"] is tc.cp_als


def test_call_without_lets_allowed_functions_through_and_returns_the_answer():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    out = tc.exercises.call_without("4.1", [tc.cp_als, torch.linalg.svd], _allowed, x)
    assert torch.equal(out, tc.unfold(x, 0))
    assert torch.linalg.svd(torch.eye(2)).S.tolist() == [1.0, 1.0]  # restored after the call


def test_forbidden_restores_after_an_error_and_rejects_bad_arguments():
    with pytest.raises(ZeroDivisionError), tc.exercises.forbidden("1.1", math.sqrt):
        _ = 1 // 0
    assert math.sqrt(4.0) == 2.0
    with pytest.raises(ValueError, match="at least one"), tc.exercises.forbidden("1.1"):
        pass
    with pytest.raises(TypeError, match="callables"), tc.exercises.forbidden("1.1", 3):
        pass
    with pytest.raises(TypeError, match="candidate must be callable"):
        tc.exercises.call_without("1.1", [math.sqrt], None)
