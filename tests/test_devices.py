"""available_devices: cpu first, then cuda exactly when torch sees a CUDA GPU."""

from __future__ import annotations

import torch

import tensorcompress as tc


def test_cpu_first_and_cuda_iff_available():
    devices = tc.available_devices()
    assert all(isinstance(d, torch.device) for d in devices)
    assert devices[0] == torch.device("cpu")
    assert (torch.device("cuda") in devices) == torch.cuda.is_available()
    assert len(devices) == len(set(devices)) == 1 + torch.cuda.is_available()


def test_follows_torch_cuda_is_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert tc.available_devices() == [torch.device("cpu"), torch.device("cuda")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tc.available_devices() == [torch.device("cpu")]


def test_every_device_computes(device, dtype):
    x = torch.arange(6, dtype=dtype, device=device).reshape(2, 3)
    assert x.device.type == device.type
    assert float((x @ x.T).sum()) == 5 + 14 + 14 + 50  # [[5, 14], [14, 50]]
