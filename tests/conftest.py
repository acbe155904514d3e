import os

import pytest
from hypothesis import HealthCheck, settings

from services.ports import free_port
from tests.processes import ProcessGroup, wait_for
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


@pytest.fixture(scope="module")
def brokers(module_processes):
    """A real Kafka-protocol broker (librdkafka's mock cluster, tests/kafka_mock.py) for this module."""
    proc = module_processes.start(["-m", "tests.kafka_mock"], name="kafka-mock")

    def ready():
        if proc.poll() is not None:
            raise AssertionError(module_processes.log_of(proc))
        lines = [ln for ln in module_processes.log_of(proc).splitlines() if ln.startswith("BROKERS ")]
        return lines[0].split()[1] if lines else None
    return wait_for(ready, timeout=60, what="mock Kafka cluster")
