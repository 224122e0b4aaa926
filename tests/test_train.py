"""tensorcompress.train: set_seed, fit (reproducible, in place, history, callbacks, loss_fn) and evaluate."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import tensorcompress as tc


def _blobs(n=120, d=5, classes=3, seed=0, dtype=torch.float32):
    """Well separated Gaussian blobs: a linearly separable ``classes``-class problem."""
    g = torch.Generator().manual_seed(seed)
    centres = 6 * torch.eye(classes, d, dtype=dtype)
    y = torch.arange(n) % classes
    x = centres[y] + torch.randn(n, d, generator=g, dtype=dtype)
    return TensorDataset(x, y)


def _model(seed=0, d=5, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, classes))


def test_set_seed_reproduces_draws():
    import random

    import numpy as np

    tc.set_seed(3)
    a = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002 -- the global state set_seed seeds
    tc.set_seed(3)
    b = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    with pytest.raises(TypeError, match=r"seed must be an int, got str \('3'\)"):
        tc.set_seed("3")


def test_fit_is_reproducible_and_seed_matters():
    data = _blobs()
    m1, m2, m3 = _model(), _model(), _model()
    h1 = tc.fit(m1, data, epochs=3, lr=1e-2, batch_size=16, seed=5, progress=False)
    h2 = tc.fit(m2, data, epochs=3, lr=1e-2, batch_size=16, seed=5, progress=False)
    tc.fit(m3, data, epochs=3, lr=1e-2, batch_size=16, seed=6, progress=False)
    assert h1 == h2
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p1, p2)
    assert not all(torch.equal(p1, p3) for p1, p3 in zip(m1.parameters(), m3.parameters(), strict=True))


def test_fit_trains_in_place_and_reports_history(device, dtype):
    data, test = _blobs(dtype=dtype), _blobs(seed=1, dtype=dtype)
    model = _model().to(dtype)
    before = [p.detach().clone() for p in model.parameters()]
    model.eval()
    history = tc.fit(model, data, epochs=6, lr=1e-2, batch_size=16, device=device, seed=0, progress=False, test=test)
    assert not model.training  # mode restored
    assert next(model.parameters()).device.type == torch.device(device).type
    assert next(model.parameters()).dtype == dtype
    assert not any(torch.equal(b, p.cpu()) for b, p in zip(before, model.parameters(), strict=True))
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert set(history[0]) == {"epoch", "loss", "accuracy", "lr", "test_accuracy", "test_loss"}
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["test_accuracy"] == 1.0  # separable blobs
    ev = tc.evaluate(model, test)
    assert history[-1]["test_accuracy"] == ev.accuracy and history[-1]["test_loss"] == pytest.approx(ev.loss)


def test_fit_history_loss_is_the_epoch_mean_of_batch_losses():
    class Record(tc.Callback):
        def __init__(self):
            self.losses = []

        def on_batch_end(self, state):
            self.losses.append((float(state.loss.detach()), state.batch[1].shape[0]))

    rec = Record()
    h = tc.fit(_model(), _blobs(n=50), epochs=1, lr=1e-2, batch_size=16, progress=False, callbacks=[rec])
    assert [n for _, n in rec.losses] == [16, 16, 16, 2]
    assert h[0]["loss"] == pytest.approx(sum(l * n for l, n in rec.losses) / 50)


def test_callback_order_and_stop():
    events = []

    class Spy(tc.Callback):
        def __getattribute__(self, name):
            if name.startswith("on_"):
                return lambda state: events.append((name, state.epoch, state.step))
            return super().__getattribute__(name)

    class Stop(tc.Callback):
        def on_epoch_end(self, state):
            state.stop = state.epoch == 2

    h = tc.fit(_model(), _blobs(n=32), epochs=5, lr=1e-2, batch_size=16, progress=False, callbacks=[Spy(), Stop()])
    assert len(h) == 2
    names = [e[0] for e in events]
    per_batch = ["on_batch_begin", "on_loss", "on_after_backward", "on_batch_end"]
    epoch = ["on_epoch_begin", *per_batch, *per_batch, "on_epoch_end"]
    assert names == ["on_train_begin", *epoch, *epoch, "on_train_end"]
    assert events[-1] == ("on_train_end", 2, 4)


def test_gradient_mask_in_on_after_backward_freezes_weights():
    model = _model()
    mask = torch.rand(model[0].weight.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    frozen = model[0].weight.detach()[mask].clone()

    class MaskGrad(tc.Callback):
        def on_after_backward(self, state):
            state.model[0].weight.grad[mask] = 0

    tc.fit(model, _blobs(), epochs=2, lr=1e-1, optimizer="sgd", progress=False, callbacks=[MaskGrad()])
    assert torch.equal(model[0].weight.detach()[mask], frozen)
    assert not torch.equal(model[0].weight.detach()[~mask], _model()[0].weight.detach()[~mask])


def test_loss_fn_receives_outputs_targets_inputs():
    seen = []

    def mse_to_one_hot(outputs, targets, inputs):
        seen.append((outputs.shape, targets.shape, inputs.shape))
        return nn.functional.mse_loss(outputs, nn.functional.one_hot(targets, 3).to(outputs.dtype))

    h = tc.fit(_model(), _blobs(n=32), epochs=1, lr=1e-2, batch_size=16, progress=False, loss_fn=mse_to_one_hot)
    assert seen == [((16, 3), (16,), (16, 5))] * 2
    assert h[0]["loss"] < 2


def test_non_finite_loss_is_an_error():
    with pytest.raises(FloatingPointError, match="training loss became nan at epoch 1, step 1"):
        tc.fit(_model(), _blobs(), epochs=1, progress=False, loss_fn=lambda o, t, x: o.sum() * math.nan)


def test_optimizers_and_cosine_schedule():
    for name in ("adam", "adamw", "sgd"):
        tc.fit(_model(), _blobs(n=16), epochs=1, lr=1e-2, optimizer=name, progress=False)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    h = tc.fit(model, _blobs(n=16), epochs=4, optimizer=opt, scheduler="cosine", progress=False)
    assert [r["lr"] for r in h] == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])


def test_fit_bad_arguments():
    data = _blobs(n=8)
    msg = "optimizer must be 'adam', 'adamw', 'sgd' or a torch.optim.Optimizer, got 'lbfgs'"
    with pytest.raises(ValueError, match=msg):
        tc.fit(_model(), data, optimizer="lbfgs", progress=False)
    with pytest.raises(ValueError, match="lr must be a positive finite number, got -1"):
        tc.fit(_model(), data, lr=-1, progress=False)
    with pytest.raises(ValueError, match="epochs must be >= 1, got 0"):
        tc.fit(_model(), data, epochs=0, progress=False)
    with pytest.raises(TypeError, match=r"callbacks\[0\] must have at least one of the methods on_train_begin, .*"
                                        r"got function"):
        tc.fit(_model(), data, callbacks=[lambda s: None], progress=False)
    with pytest.raises(TypeError, match="train must be a torch Dataset or DataLoader, got list"):
        tc.fit(_model(), [1, 2], progress=False)
    with pytest.raises(ValueError, match="scheduler must be None, 'cosine' or a callable"):
        tc.fit(_model(), data, scheduler="step", progress=False)


def test_progress_bar_quiet(capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    tc.fit(_model(), _blobs(n=8), epochs=1, progress=False)
    assert capsys.readouterr().err == ""
    tc.fit(_model(), _blobs(n=8), epochs=1, progress=True)
    assert "fit" in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    tc.fit(_model(), _blobs(n=8), epochs=1, progress=True)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- evaluate


class _Fixed(nn.Module):
    """Returns the stored logits row for each input index (x holds indices)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, x):
        return self.logits[x.long().squeeze(1)]


def test_evaluate_hand_computed(device, dtype):
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 0.0]], dtype=dtype)
    data = TensorDataset(torch.arange(4.0).unsqueeze(1), torch.tensor([0, 1, 1, 1]))
    ev = tc.evaluate(_Fixed(logits), data, device=device, batch_size=3)
    # predictions 0, 1, 0, 0 (ties go to the first class): 2 of 4 correct
    assert ev.accuracy == 0.5 and ev.n == 4
    lse = torch.logsumexp(logits.double(), 1)
    expected = float((lse - logits.double()[torch.arange(4), torch.tensor([0, 1, 1, 1])]).mean())
    assert ev.loss == pytest.approx(expected, rel=1e-6)
    assert ev.to_dict() == {"accuracy": 0.5, "loss": ev.loss, "n": 4}


def test_evaluate_restores_mode_and_accepts_loaders():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5))
    data = _blobs(n=30)
    for mode in (True, False):
        model.train(mode)
        a = tc.evaluate(model, data)
        assert model.training is mode and all(m.training is mode for m in model.modules())
    b = tc.evaluate(model, DataLoader(data, batch_size=7))  # dropout is off during evaluation: same numbers
    assert a.accuracy == b.accuracy and a.n == b.n  # the loss is summed in another order: equal up to rounding
    assert a.loss == pytest.approx(b.loss, rel=1e-6)

    class ListData(Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            return data[i]

    c = tc.evaluate(model, ListData())
    assert c.accuracy == a.accuracy and c.loss == pytest.approx(a.loss, rel=1e-6)


def test_evaluate_empty_data():
    with pytest.raises(ValueError, match="data must hold at least one sample"):
        tc.evaluate(nn.Linear(5, 3), TensorDataset(torch.zeros(0, 5), torch.zeros(0, dtype=torch.long)))
