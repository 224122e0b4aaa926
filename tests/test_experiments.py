"""tc.metrics.over_seeds: mean and sample standard deviation (ddof = 1) over seeds, checked against NumPy."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given
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


# ---------------------------------------------------------------- drawn values against exact rational arithmetic


def _exact(values) -> tuple[Fraction, float]:
    """The exact mean, and the sample standard deviation rounded once (the variance is exact; its square root is
    taken at a power-of-two scale where the float conversion neither overflows nor underflows)."""
    xs = [Fraction(v) for v in values]
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    if var == 0:
        return mean, 0.0
    k = (var.denominator.bit_length() - var.numerator.bit_length()) // 2  # var · 4^k is within [1/4, 4]
    return mean, math.ldexp(math.sqrt(float(var * Fraction(4) ** k)), -k)


def _with_ties(elements):
    """Lists of 2-10 values drawn from a pool of 1-4 values: every value repeated, ties between seeds."""
    return st.lists(elements, min_size=1, max_size=4).flatmap(
        lambda pool: st.lists(st.sampled_from(pool), min_size=2, max_size=10))


# moderate magnitudes, against a tolerance; the next test takes any magnitude, subnormals included, exactly
MODERATE = st.floats(-1e6, 1e6).map(lambda v: v if abs(v) >= 1e-100 else 0.0)
FINITE = st.floats(-1e300, 1e300)


@given(values=st.one_of(st.lists(MODERATE, min_size=2, max_size=10), _with_ties(MODERATE)))
def test_mean_and_std_within_an_ulp_of_the_largest_value_of_exact_arithmetic(values):
    stats = over_seeds(lambda s: values[s], seeds=range(len(values)))
    mean, std = _exact(values)
    ulp = math.ulp(max(abs(v) for v in values))
    assert abs(Fraction(stats.mean) - mean) <= ulp  # fsum is exact; one rounding, one division
    # a two-pass std is off by at most sqrt(n/(n-1)) times the mean's error, plus roundings relative to itself
    assert abs(stats.std - std) <= 2 * ulp + 1e-14 * std


@given(values=st.one_of(st.lists(FINITE, min_size=2, max_size=10), _with_ties(FINITE)))
@example(values=[0.97, 0.97, 0.97])
@example(values=[1e300, -1e300])
@example(values=[1e-200, 0.0])
@example(values=[5e-324, 0.0, 1e-310])  # subnormals
def test_mean_and_std_correctly_rounded_at_any_magnitude_and_for_ties(values):
    stats = over_seeds(lambda s: values[s], seeds=range(len(values)))
    mean, std = _exact(values)
    assert stats.mean == float(mean)
    assert abs(stats.std - std) <= math.ulp(std)
    if len(set(values)) == 1:
        assert stats.mean == values[0] and stats.std == 0.0


def _rounds_to(r: float, x: Fraction) -> bool:
    """Whether ``r`` is sqrt(x) rounded to the nearest float, ties to even, checked on squares (no square root):
    x lies between the squares of the midpoints to r's neighbours, on a boundary only if r's last bit is 0."""
    if x == 0:
        return r == 0.0
    down, up = Fraction(math.nextafter(r, 0.0)), Fraction(math.nextafter(r, math.inf))
    lo, hi = (down + Fraction(r)) / 2, (Fraction(r) + up) / 2
    even = (Fraction(r) / Fraction(math.ulp(r))).numerator % 2 == 0
    return lo**2 < x < hi**2 or (even and x in (lo**2, hi**2))


def _variance(values) -> Fraction:
    xs = [Fraction(v) for v in values]
    mean = sum(xs) / len(xs)
    return sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)


TINY = st.floats(-1e-300, 1e-300)  # subnormals and tiny normals: squares far below the smallest float
HUGE = st.floats(1e300, 1.7e308).flatmap(lambda v: st.sampled_from([v, -v]))


@given(values=st.one_of(*(st.lists(e, min_size=2, max_size=8) for e in (FINITE, TINY, HUGE)),
                        _with_ties(TINY), _with_ties(HUGE)))
@example(values=[5e-324, 0.0])
@example(values=[5e-324, 1e-323, 0.0])
@example(values=[1.7e308, 1.6e308])
def test_std_is_the_correctly_rounded_square_root_of_the_exact_variance(values):
    stats = tc.metrics.SeedStats.from_values(values, range(len(values)))
    var = _variance(values)
    if math.isinf(stats.std):  # beyond the largest float: only then
        assert var >= (Fraction(math.nextafter(math.inf, 0.0)) + Fraction(math.ulp(1.7e308)) / 2) ** 2
    else:
        assert _rounds_to(stats.std, var), (stats.std, values)


def test_the_rounding_check_can_fail():
    assert _rounds_to(1.0, Fraction(1)) and _rounds_to(3.0, Fraction(9)) and _rounds_to(5e-324, Fraction(5e-324) ** 2)
    assert not _rounds_to(math.nextafter(1.0, 2.0), Fraction(1))
    assert not _rounds_to(math.sqrt(2.0), Fraction(2) + Fraction(1, 10**6))


def test_a_spread_beyond_the_largest_float_is_inf_and_equal_values_give_zero():
    big = 1.7e308
    stats = tc.metrics.SeedStats.from_values([big, -big], [0, 1])  # std = big * sqrt(2)
    assert stats.mean == 0.0 and stats.std == math.inf
    stats = tc.metrics.SeedStats.from_values([0.97] * 3, [0, 1, 2])
    assert stats.mean == 0.97 and stats.std == 0.0


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
