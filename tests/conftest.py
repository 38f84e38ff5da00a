"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from typing import Any, Iterator

import pytest

from tests.helpers import local_ray_instance

# The real-runtime tests compare against float32 references on the CPU; on a GPU host `device:
# auto` would put the runtime (and the site processes, which inherit this) in bfloat16 on CUDA.
# tests/test_real_cuda.py runs the CUDA path with explicit devices.
os.environ.setdefault("SPECCTL_DEVICE", "cpu")


@pytest.fixture(scope="session")
def local_ray() -> Iterator[Any]:
    """One local Ray instance (2 CPUs) for the whole session (under ``pytest -n 2``, one per worker
    that runs a Ray test), shut down at its end: each start costs seconds and, on a loaded host,
    risks Ray's fixed start-up timeout."""
    ray = local_ray_instance()
    yield ray
    ray.shutdown()
