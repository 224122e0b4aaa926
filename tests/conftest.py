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


def tolerance(dtype: torch.dtype) -> float:
    """A relative tolerance suited to ``dtype``."""
    return 1e-4 if dtype == torch.float32 else 1e-10
