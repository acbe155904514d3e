import os

import pytest

from services.ports import free_port
from tests.processes import ProcessGroup
from tests.serving_fixtures import distributed_export, trained_on_3_shards  # noqa: F401 (session fixtures)

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
