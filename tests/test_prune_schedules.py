"""Schedules: AGP's values are Zhu & Gupta's formula; callbacks move the masks the model owns during tc.fit;
sensitivity scan and lottery tickets with rewinding."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import TensorDataset

import tensorcompress as tc
from tensorcompress import pruning


@given(final=st.floats(0, 1), initial=st.floats(0, 0.5), start=st.integers(0, 20), n=st.integers(1, 10),
       freq=st.integers(1, 5), t=st.integers(0, 120))
def test_agp_values_are_the_cubic_formula(final, initial, start, n, freq, t):
    s = pruning.agp_sparsity(t, final=final, initial=initial, start=start, n_steps=n, frequency=freq)
    if t < start:
        assert s == initial
    elif t >= start + n * freq:
        assert s == pytest.approx(final, abs=1e-15)
    else:
        t_update = start + (t - start) // freq * freq  # the last update step at or before t
        assert s == pytest.approx(final + (initial - final) * (1 - (t_update - start) / (n * freq)) ** 3,
                                  abs=1e-15)


def test_agp_known_values():
    # s_f = 0.9, s_i = 0, n = 4: 0.9 * (1 - (1 - k/4)^3) = 0, 0.5203125, 0.7875, 0.8859375, 0.9
    got = [pruning.agp_sparsity(k, final=0.9, n_steps=4) for k in range(6)]
    assert got == pytest.approx([0.0, 0.5203125, 0.7875, 0.8859375, 0.9, 0.9], abs=1e-15)
    with pytest.raises(ValueError, match="final must be a number in"):
        pruning.agp_sparsity(0, final=1.5)
    with pytest.raises(ValueError, match="n_steps must be a positive int"):
        pruning.agp_sparsity(0, final=0.5, n_steps=0)


def _data(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    return TensorDataset(x, y)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2))


def test_agp_callback_moves_the_models_masks():
    net, data = _net(), _data()
    agp = pruning.AGP(0.8, n_steps=4, frequency=3, start=2)
    tc.fit(net, data, epochs=2, batch_size=40, progress=False, callbacks=[agp])  # 12 steps
    steps = [t for t, _ in agp.log]
    assert steps == [0, 5, 8, 11]  # updates at t0 + k·Δt = 2, 5, 8, 11; t = 2 keeps s_i = 0
    for t, s in agp.log:
        assert s == pytest.approx(pruning.agp_sparsity(t, final=0.8, start=2, n_steps=4, frequency=3))
    for layer in (net[0], net[2]):
        assert hasattr(layer, "weight_mask")  # the model owns the mask
        assert float((layer.weight_mask == 0).float().mean()) == pytest.approx(agp.current, abs=0.02)
    assert {"0.weight_orig", "0.weight_mask"} <= set(net.state_dict())


def test_one_shot_and_iterative():
    net, data = _net(), _data()
    shot = pruning.one_shot(0.5, scope="global")
    tc.fit(net, data, epochs=2, batch_size=60, progress=False, callbacks=[shot])
    assert shot.log == [(0, 0.5)]
    zeros = sum(int((m.weight == 0).sum()) for m in (net[0], net[2]))
    assert zeros == round(0.5 * (16 * 32 + 32 * 2))
    net = _net()
    it = pruning.iterative([0.3, 0.6, 0.8], epochs_per_step=1)
    tc.fit(net, data, epochs=4, batch_size=60, progress=False, callbacks=[it])
    assert it.log == [(0, 0.3), (1, 0.6), (2, 0.8)]
    assert float((net[0].weight == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)
    with pytest.raises(ValueError, match="non-decreasing"):
        pruning.iterative([0.5, 0.3])


def test_sensitivity_scan():
    net, data = _net(), _data()
    tc.fit(net, data, epochs=5, batch_size=40, progress=False)
    scan = pruning.sensitivity_scan(net, data, [0.0, 0.5, 1.0])
    assert list(scan) == ["0", "2"]
    dense = tc.evaluate(net, data).accuracy
    assert all(acc[0] == dense for acc in scan.values())
    assert scan["2"][2] == tc.evaluate(pruning.prune(net, 1.0, include="2")[0], data).accuracy
    assert not hasattr(net[0], "weight_mask")  # untouched


def test_lottery_ticket_rewinds_the_kept_weights():
    net, data = _net(), _data()
    init = {k: v.clone() for k, v in net.state_dict().items()}
    ticket, history = pruning.lottery_ticket(net, data, rounds=2, amount=0.5, epochs=1, batch_size=60)
    assert [h["sparsity"] for h in history] == [0.5, 0.75]
    for name in ("0", "2"):
        layer = ticket.get_submodule(name)
        mask = layer.weight_mask.bool()
        assert float((~mask).float().mean()) == pytest.approx(0.75, abs=0.01)
        assert torch.equal(layer.weight[mask], init[f"{name}.weight"][mask])  # rewound to initialisation
        assert torch.all(layer.weight[~mask] == 0)
    assert torch.equal(net[0].weight, init["0.weight"])  # input untouched
    late, _ = pruning.lottery_ticket(net, data, rounds=1, amount=0.5, epochs=1, rewind_epochs=1, batch_size=60)
    assert not torch.equal(late[0].weight_orig, init["0.weight"])  # rewound to epoch 1, not to initialisation
    with pytest.raises(ValueError, match="rounds must be a positive int"):
        pruning.lottery_ticket(net, data, rounds=0)
