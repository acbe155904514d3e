"""Session fixtures shared by the export and serving tests (registered in conftest.py): one tiny model
trained on 3 PS shards with a checkpoint at each of `STEPS`, and one distributed export of its last
checkpoint for 2 serving PS shards. Training and exporting are the expensive parts; every test that only
reads them uses these."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.processes import ProcessGroup
from tests.ps_cluster import start_cluster
from tests.tiny_models import ServingDNN, make_batches, monolith_examples

STEPS = (10, 20, 30, 40)
SERVING_SHARDS = 2


@dataclass(frozen=True)
class TrainedModel:
    model_dir: str
    reference: list[dict]
    """`Estimator.predict` of the trained model on `examples`, one dict of heads per example."""
    examples: list[bytes]
    """Every input row as a serialized Monolith `Example` (the serving input), in input order."""


@pytest.fixture(scope="session")
def trained_on_3_shards(tmp_path_factory) -> TrainedModel:
    from worker.model import SgdOptimizer
    from worker.runtime.estimator import Estimator
    from worker.runtime.run_config import RunConfig

    model_dir = str(tmp_path_factory.mktemp("trained") / "model")
    group = ProcessGroup()
    try:
        shards = start_cluster(group, 3)
        est = Estimator(ServingDNN(SgdOptimizer(0.3)),
                        RunConfig(model_dir=model_dir, ps_addresses=[s.address for s in shards]))
        for step in STEPS:
            est.train(step)
            est.save(step)
        reference = list(est.predict())
        est.close()
    finally:
        group.close()
    examples = [e for b in make_batches() for e in monolith_examples(b)]
    assert len(reference) == len(examples)
    return TrainedModel(model_dir, reference, examples)


@pytest.fixture(scope="session")
def distributed_export(trained_on_3_shards, tmp_path_factory) -> dict[str, str]:
    """{"entry" | "ps_<i>": version directory} of the last checkpoint, exported for 2 serving PS shards."""
    from worker.export.saved_model_exporters import DistributedExporter

    base = tmp_path_factory.mktemp("distributed")
    out = DistributedExporter(ServingDNN(), trained_on_3_shards.model_dir, str(base),
                              num_serving_shards=SERVING_SHARDS, global_step_as_timestamp=True,
                              warmup_records=64).export_saved_model()
    return {name: path.decode() for name, path in out.items()}
