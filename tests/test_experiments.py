"""tc.metrics.over_seeds: mean and sample standard deviation (ddof = 1) over seeds, checked against NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensorcompress as tc

over_seeds = tc.metrics.over_seeds


@given(values=st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=10))
def test_mean_and_sample_std_match_numpy(values):
    seeds = tuple(range(len(values)))
    stats = over_seeds(lambda s: values[s], seeds=seeds)
    assert stats.values == tuple(values) and stats.seeds == seeds
    scale = max(1.0, max(abs(v) for v in values))
    assert math.isclose(stats.mean, np.mean(values), rel_tol=1e-12, abs_tol=1e-12 * scale)
    assert math.isclose(stats.std, np.std(values, ddof=1), rel_tol=1e-9, abs_tol=1e-9 * scale)
    flipped = stats.scaled(-2.0)  # a negative factor flips the mean, never the spread (exact: a power of two)
    assert flipped.mean == -2.0 * stats.mean and flipped.std == 2.0 * stats.std


def test_sample_not_population_std():
    stats = over_seeds(lambda s: float(s), seeds=(0, 1, 2))  # 0, 1, 2: sample std 1, population std sqrt(2/3)
    assert stats.mean == 1.0 and stats.std == 1.0
    assert math.isclose(stats.std, float(torch.tensor([0.0, 1.0, 2.0]).std()))  # torch.std: Bessel-corrected too


def test_format_and_scaling():
    stats = over_seeds(lambda s: [0.970, 0.974, 0.972][s])
    pct = stats.scaled(100)
    assert str(pct) == "97.2 ± 0.2"
    assert f"{stats:.3f}" == "0.972 ± 0.002"
    assert math.isclose(pct.std, 100 * stats.std) and pct.seeds == (0, 1, 2)
    assert str(over_seeds(lambda s: 97.0 + 0.1 * s)) == "97.1 ± 0.1"


def test_each_seed_called_once_in_order():
    calls = []
    over_seeds(lambda s: calls.append(s) or 1.0, seeds=[5, 3, 9])
    assert calls == [5, 3, 9]


def test_seeded_training_runs_are_reproducible():
    # the intended use: fn seeds everything it draws; the same seeds give the same statistics
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return float(torch.randn(100, generator=g).mean())

    a, b = over_seeds(run), over_seeds(run)
    assert a == b and a.std > 0


def test_mapping_results():
    out = over_seeds(lambda s: {"before": 10.0 + s, "after": 20.0 - s})
    assert list(out) == ["before", "after"]
    assert out["before"].mean == 11.0 and out["after"].mean == 19.0 and out["after"].std == 1.0
    with pytest.raises(ValueError, match="same names"):
        over_seeds(lambda s: {"a": 1.0} if s == 0 else {"b": 1.0})
    with pytest.raises(TypeError, match="same kind"):
        over_seeds(lambda s: {"a": 1.0} if s == 1 else 1.0)


@pytest.mark.parametrize("seeds", [(0,), (), (1, 1), [2, 2, 3]])
def test_too_few_or_repeated_seeds(seeds):
    with pytest.raises(ValueError, match="seeds"):
        over_seeds(lambda s: 1.0, seeds=seeds)


@pytest.mark.parametrize("seeds", [(0, 1.5), ("0", "1"), "01", 3, (True, False)])
def test_bad_seed_types(seeds):
    with pytest.raises(TypeError, match="seeds"):
        over_seeds(lambda s: 1.0, seeds=seeds)


@pytest.mark.parametrize("value, error", [(float("nan"), ValueError), (float("inf"), ValueError),
                                          ("97", TypeError), (None, TypeError), (True, TypeError)])
def test_bad_results_named(value, error):
    with pytest.raises(error, match=r"fn\(0\)"):
        over_seeds(lambda s: value)
    with pytest.raises(error, match=r"fn\(0\)\['acc'\]"):
        over_seeds(lambda s: {"acc": value})


def test_fn_not_callable_and_from_values():
    with pytest.raises(TypeError, match="fn"):
        over_seeds(97.0)
    with pytest.raises(ValueError, match="at least two"):
        tc.metrics.SeedStats.from_values([1.0], [0])
