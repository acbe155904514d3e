"""The seed's graph_utils tests in TF2 terms, on the checked-in dump `tests/data/model_dump_v1/`.

That dump was written by an earlier build of the project (regenerate it only on purpose: see
tests/dump_fixture_model.py). Loading it must give the recorded inputs (ragged where recorded ragged), a
receiver with one receiver tensor, and train/eval/predict modes that compute what the model's code does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tests.dump_fixture_model import DumpFixtureModel, examples, parse
from worker.model import Estimator, RunConfig
from worker.model_dump import dump_file
from worker.model_dump.replay import DumpedModel
from worker.modeling.estimator_spec import ModeKeys

DUMP = Path(__file__).resolve().parent / "data" / "model_dump_v1"
IDS = np.arange(0, 12, dtype=np.int64)


@pytest.fixture(scope="module")
def model():
    return DumpedModel(DUMP)


def _check_kind(value, info) -> None:
    if info.is_ragged:
        assert isinstance(value, tf.RaggedTensor), info.name
        assert value.dtype.name == info.dtype and value.row_splits.dtype.name == info.row_splits_dtype
    else:
        assert isinstance(value, tf.Tensor) and not isinstance(value, tf.RaggedTensor), info.name
        assert value.dtype.name == info.dtype
        if info.last_dim >= 0:
            assert value.shape[-1] == info.last_dim


def test_load_input_fn(model):
    for recorded in model.dump.input_functions:
        batch = next(iter(model.input_fn(recorded.mode)))
        assert sorted(batch) == sorted(t.name for t in recorded.features)
        for info in recorded.features:
            _check_kind(batch[info.name], info)
    kinds = {t.name: t.is_ragged for t in model.dump.input_functions[0].features}
    assert kinds == {"user": True, "item": True, "tags": True, "history": True, "price": False, "label": False}


def test_load_receiver(model):
    specs, parse_fn = model.serving_input_receiver_fn()
    assert list(specs) == ["examples"]  # one receiver tensor
    serialized = tf.constant(examples()[:5])
    features = parse_fn({"examples": serialized})
    for info in model.dump.serving_input_receiver.features:
        _check_kind(features[info.name], info)
    expected = parse(serialized)  # the model's own parse function
    for name, value in expected.items():
        np.testing.assert_array_equal(tf.convert_to_tensor(features[name].values if isinstance(value, tf.RaggedTensor)
                                                           else features[name]),
                                      value.values if isinstance(value, tf.RaggedTensor) else value)


def test_load_modes(model):
    modes = {f.mode: f for f in model.dump.model_functions}
    assert set(modes) == {ModeKeys.TRAIN, ModeKeys.EVAL, ModeKeys.PREDICT, "serving"}
    assert modes[ModeKeys.TRAIN].gradient_function and not modes[ModeKeys.PREDICT].gradient_function
    assert modes[ModeKeys.TRAIN].extra_losses == 1 and list(modes[ModeKeys.PREDICT].extra_outputs) == ["logit"]


def _run(m, model_dir: Path) -> dict:
    est = Estimator(m, RunConfig(model_dir=str(model_dir)))
    try:
        stats = est.train(4)
        return {"loss": stats["loss"], "rows": est.backend.lookup({t: IDS for t in ("item", "tags", "user")}),
                "eval": est.evaluate(), "predict": np.array([p["click"] for p in est.predict()])}
    finally:
        est.close()


def test_the_stored_dump_trains_evaluates_and_predicts_like_the_code(tmp_path):
    """train/eval/predict from the stored dump (a fresh model, not the module fixture) equal the model's code."""
    code, dump = _run(DumpFixtureModel(), tmp_path / "code"), _run(DumpedModel(DUMP), tmp_path / "dump")
    assert dump["loss"] == pytest.approx(code["loss"], abs=1e-6)
    for table, rows in code["rows"].items():
        np.testing.assert_allclose(dump["rows"][table], rows, rtol=0, atol=1e-6, err_msg=table)
    assert dump["eval"]["click_auc"] == pytest.approx(code["eval"]["click_auc"], abs=1e-6)
    assert dump["eval"]["loss"] == pytest.approx(code["eval"]["loss"], abs=1e-6)
    assert dump["predict"].shape == (16,)
    np.testing.assert_allclose(dump["predict"], code["predict"], rtol=0, atol=1e-6)


def test_the_stored_dump_is_the_current_format():
    assert dump_file.read(DUMP).format_version == dump_file.FORMAT_VERSION
