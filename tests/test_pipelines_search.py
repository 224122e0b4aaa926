"""Structure search (tc.pipelines.width_search): budgets, samplers, finalists, errors. Seeded and cheap."""

from __future__ import annotations

import pytest
import torch

import tensorcompress as tc
from tensorcompress.pipelines import search as S

WIDTHS = (2, 4, 8)


@pytest.fixture(scope="module")
def digits():
    train, test = tc.data.load_digits()
    small_train = torch.utils.data.TensorDataset(*(t[:300] for t in train.tensors))
    val = torch.utils.data.TensorDataset(*(t[:120] for t in test.tensors))
    return small_train, val


def _closed_form_flops(c1: int, c2: int, c0: int = 1, h: int = 8, k: int = 10) -> int:
    # 3x3 convolutions, padding 1: every output position costs 9 c_in MACs; the second block runs at (h/2)^2
    return 2 * (h * h * 9 * (c0 * c1 + c1 * c1) + (h // 2) ** 2 * 9 * (c1 * c2 + c2 * c2) + c2 * k)


@pytest.mark.parametrize("channels", [(2, 2), (4, 8), (32, 64), (5, 3)])
def test_width_cost_matches_the_closed_form_and_the_file(channels):
    f, b = S.width_cost(channels, (1, 8, 8), 10)
    assert f == _closed_form_flops(*channels)
    assert b == tc.model_size_bytes(tc.models.SmallCNN(input_size=8, channels=channels))


def test_random_search_respects_the_budget_and_trains_the_finalists(digits):
    train, val = digits
    budget = _closed_form_flops(4, 4)
    res = tc.pipelines.width_search(train, val, max_flops=budget, widths=WIDTHS, n_candidates=4, n_final=2,
                                    final_epochs=2, seed=0)
    feasible = [(a, b) for a in WIDTHS for b in WIDTHS if _closed_form_flops(a, b) <= budget]
    assert res.n_feasible == len(feasible) == 5
    assert len(res.candidates) == 4 and len({c.channels for c in res.candidates}) == 4
    assert all(c.channels in feasible and c.flops <= budget for c in res.candidates)
    assert all(0 <= c.proxy_accuracy <= 1 for c in res.candidates)
    finalists = res.finalists
    assert len(finalists) == 2 and res.best == finalists[0]
    by_proxy = sorted(res.candidates, key=lambda c: (-c.proxy_accuracy, c.flops))
    assert {c.channels for c in finalists} == {c.channels for c in by_proxy[:2]}
    assert tuple(res.model.features[0][0].weight.shape[:1]) == (res.best.channels[0],)
    assert tc.evaluate(res.model, val).accuracy == res.best.accuracy
    table = str(res)
    assert "flops <= " in table and table.count("*") == 1 and str(res.best.channels) in table
    assert len(res.to_dict()) == 4


def test_same_seed_same_sample_and_byte_budget(digits):
    train, val = digits
    kw = dict(max_bytes=S.width_cost((4, 4), (1, 8, 8), 10)[1], widths=WIDTHS, n_candidates=3, n_final=1,
              final_epochs=1)
    a = tc.pipelines.width_search(train, val, seed=3, **kw)
    b = tc.pipelines.width_search(train, val, seed=3, **kw)
    assert [c.channels for c in a.candidates] == [c.channels for c in b.candidates]
    assert all(c.bytes <= kw["max_bytes"] for c in a.candidates)
    assert a.budget == {"bytes": kw["max_bytes"]}


def test_evolution_evaluates_distinct_affordable_pairs(digits):
    train, val = digits
    budget = _closed_form_flops(8, 8)
    res = tc.pipelines.width_search(train, val, max_flops=budget, widths=(2, 3, 4, 6, 8), method="evolution",
                                    n_candidates=6, n_final=1, final_epochs=1, seed=1)
    chans = [c.channels for c in res.candidates]
    assert len(chans) == 6 == len(set(chans))
    assert all(c.flops <= budget for c in res.candidates)
    assert len(res.finalists) == 1


def test_more_candidates_than_affordable_pairs_is_capped(digits):
    train, val = digits
    res = tc.pipelines.width_search(train, val, max_flops=_closed_form_flops(2, 2), widths=WIDTHS,
                                    n_candidates=10, n_final=3, final_epochs=1)
    assert [c.channels for c in res.candidates] == [(2, 2)] and res.best.channels == (2, 2)


def test_bad_input_gets_a_clear_error(digits):
    train, val = digits
    with pytest.raises(ValueError, match=r"no width pair .* cheapest, \(2, 2\), costs"):
        tc.pipelines.width_search(train, val, max_flops=1000, widths=WIDTHS)
    with pytest.raises(ValueError, match="give a budget"):
        tc.pipelines.width_search(train, val, widths=WIDTHS)
    with pytest.raises(ValueError, match="max_bytes must be a positive number"):
        tc.pipelines.width_search(train, val, max_bytes=-5, widths=WIDTHS)
    with pytest.raises(ValueError, match="method must be one of"):
        tc.pipelines.width_search(train, val, max_flops=10**9, method="grid", widths=WIDTHS)
    with pytest.raises(TypeError, match="widths"):
        tc.pipelines.width_search(train, val, max_flops=10**9, widths=8)
    with pytest.raises(ValueError, match="n_final must be >= 1"):
        tc.pipelines.width_search(train, val, max_flops=10**9, widths=WIDTHS, n_final=0)
    flat = torch.utils.data.TensorDataset(torch.zeros(4, 64), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="square images"):
        tc.pipelines.width_search(flat, flat, max_flops=10**9, widths=WIDTHS)
