"""Fixtures shared by several test modules."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.helpers import local_ray_instance


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """A local Ray instance (2 CPUs) for one test module, shut down after it."""
    ray = local_ray_instance()
    yield ray
    ray.shutdown()
