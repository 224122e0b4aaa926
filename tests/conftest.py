"""Shared fixtures: every device-aware test runs on each available device and in float32 and float64."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import tensorcompress as tc

# Hypothesis: deterministic in CI, bounded so the suite stays well under five minutes on two cores.
settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DEVICES = tc.available_devices()
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(params=DEVICES, ids=str)
def device(request) -> torch.device:
    """Each available device: ``cpu``, and ``cuda`` when present."""
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request) -> torch.dtype:
    """float32 and float64."""
    return request.param


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Unit tests use small tensors: one torch thread avoids waking (and, on a busy 2-core machine, oversubscribing)
    a thread pool, and makes reductions run in the same order on every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
