import os

import pytest

from services.ports import free_port
from tests.processes import ProcessGroup, wait_for

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


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
