import os

import pytest

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture
def ray_local():
    """A real local Ray (2 CPUs), started once and reused; tests that need a fresh cluster shut it down."""
    import ray

    from raygen import runtime

    if not ray.is_initialized():
        runtime.init(num_cpus=2)
    yield ray
