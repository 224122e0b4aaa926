"""The shared test helpers can fail: each thing ``assert_model_unchanged`` checks, changed alone, is caught."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_model_unchanged, mlp, model_state, tied_mlp
from torch import nn


def _untie(net):
    net[2].weight = nn.Parameter(net[0].weight.detach().clone())


CHANGES = {
    "a weight": lambda net: net[0].bias.data.add_(1e-7),
    "a dtype": lambda net: net[0].double(),
    "a mode": lambda net: net[1].eval(),
    "a flag": lambda net: net[0].bias.requires_grad_(False),
    "a hook": lambda net: net[1].register_forward_hook(lambda *a: None),
    "a tie": _untie,
    "a gradient": lambda net: net(torch.ones(1, 4)).sum().backward(),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_every_change_is_caught(change):
    net = tied_mlp(width=4)
    before = model_state(net)
    assert_model_unchanged(net, before)  # nothing changed: passes
    change(net)
    with pytest.raises(AssertionError):
        assert_model_unchanged(net, before)


def test_mlp_is_seeded():
    a, b = mlp(3, 5, 2, seed=4), mlp(3, 5, 2, seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a[0].weight, mlp(3, 5, 2, seed=5)[0].weight)
