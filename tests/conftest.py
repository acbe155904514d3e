import os

import pytest
from hypothesis import HealthCheck, settings

from services.ports import free_port
from tests.processes import ProcessGroup
from tests.serving_fixtures import distributed_export, trained_on_3_shards  # noqa: F401 (session fixtures)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Property and fuzz tests: "ci" (the default, in `make test`) is bounded and repeatable; `make fuzz` sets
# MONOLITH_HYPOTHESIS_PROFILE=fuzz for a long randomized run.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=25, derandomize=True, deadline=None, suppress_health_check=_SLOW_OK)
settings.register_profile("fuzz", max_examples=int(os.environ.get("MONOLITH_FUZZ_EXAMPLES", "1000")), deadline=None,
                          suppress_health_check=_SLOW_OK)
settings.load_profile(os.environ.get("MONOLITH_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def processes():
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.close()


@pytest.fixture(scope="module")
def module_processes():
    group = ProcessGroup()
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def port():
    return free_port()
