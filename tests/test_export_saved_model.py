"""Standalone and distributed exports of the model trained on 3 PS shards (tests/serving_fixtures.py):
predictions equal Estimator.predict in a fresh process that imports TensorFlow only; tables, signatures,
warmup files, versions and bad checkpoints."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from ps.errors import CheckpointError
from services.export_layout import WARMUP_FILE
from tests.serving_fixtures import SERVING_SHARDS, STEPS
from tests.tiny_models import ServingDNN
from worker.export.checkpoint_reader import CheckpointReader
from worker.export.saved_model_exporters import StandaloneExporter
from worker.export.warmup import decode_warmup_file, read_warmup_file

# the first test to use the session fixtures (training on 3 shards, exports) also pays for them
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

_FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    path, inputs, out = sys.argv[1:4]
    model = tf.saved_model.load(path)
    examples = np.load(inputs, allow_pickle=True)["examples"]
    result = model.signatures["serving_default"](examples=tf.constant(list(examples)))
    hidden = model.signatures["hidden"](examples=tf.constant(list(examples)))["hidden"]
    np.savez(out, **{k: v.numpy() for k, v in result.items()}, hidden=hidden.numpy())
    print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("worker", "ps", "services", "serving",
                                                                          "numba", "protos"))))
""")


@pytest.fixture(scope="module")
def trained(trained_on_3_shards):
    return trained_on_3_shards.model_dir, trained_on_3_shards.reference, trained_on_3_shards.examples


def _exporter(model_dir: str, base) -> StandaloneExporter:
    return StandaloneExporter(ServingDNN(), model_dir, str(base), global_step_as_timestamp=True, warmup_records=128,
                              model_name="m")


@pytest.fixture(scope="module")
def standalone(trained, tmp_path_factory):
    """One standalone export (warmup requests for model "m") shared by the tests that only read it."""
    return _exporter(trained[0], tmp_path_factory.mktemp("standalone")).export_saved_model().decode()


def test_standalone_export_predicts_like_the_estimator_in_a_tensorflow_only_process(trained, standalone, tmp_path):
    model_dir, preds, examples = trained
    export_dir = standalone
    assert os.path.basename(export_dir).isdigit()
    np.savez(tmp_path / "in.npz", examples=np.array(examples, dtype=object))
    done = subprocess.run([sys.executable, "-c", _FRESH, export_dir, str(tmp_path / "in.npz"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []     # no project module, no numba
    out = np.load(tmp_path / "out.npz")
    for head in ("ctr", "score"):
        np.testing.assert_allclose(out[head], np.array([p[head] for p in preds]), rtol=0, atol=1e-6)
    assert out["hidden"].shape == (len(examples), 8)


def test_standalone_tables_lookup_and_assign(trained, standalone):
    model_dir, _, _ = trained
    model = tf.saved_model.load(standalone)  # loaded state only: the export on disk is unchanged
    reader = CheckpointReader.open(model_dir)
    ids, values = reader.table_rows("f1")
    got = model.signatures["lookup"](f0=tf.constant([], tf.int64), f1=tf.constant([ids[3], 10**12, ids[0]]))
    np.testing.assert_array_equal(got["f1"].numpy(), np.stack([values[3], np.zeros(4, np.float32), values[0]]))
    res = model.signatures["hashtable_assign"](
        f0_id=tf.constant([], tf.int64), f0_value=tf.zeros([0, 4]),
        f1_id=tf.constant([10**12, ids[3], 10**12]), f1_value=tf.constant([[1.0] * 4, [2.0] * 4, [3.0] * 4]))
    assert res["f1_result"].numpy() == 3
    got = model.signatures["lookup"](f0=tf.constant([], tf.int64), f1=tf.constant([10**12, ids[3], ids[0]]))
    np.testing.assert_array_equal(got["f1"].numpy(), np.stack([[3.0] * 4, [2.0] * 4, values[0]]))


def test_float16_export_is_close(trained, tmp_path):
    model_dir, preds, examples = trained
    path = StandaloneExporter(ServingDNN(), model_dir, str(tmp_path), float16=True).export_saved_model().decode()
    out = tf.saved_model.load(path).signatures["serving_default"](examples=tf.constant(examples[:64]))
    np.testing.assert_allclose(out["ctr"].numpy(), [p["ctr"] for p in preds[:64]], atol=2e-3)


def test_warmup_file_is_tf_serving_format(standalone):
    path = standalone
    logs = read_warmup_file(os.path.join(path, "assets.extra", WARMUP_FILE))
    signatures = [entry.predict_log.request.model_spec.signature_name for entry in logs]
    assert "serving_default" in signatures and "hidden" in signatures
    for entry in logs:
        assert entry.predict_log.request.model_spec.name == "m"
        assert tf.make_ndarray(entry.predict_log.request.inputs["examples"]).shape == (64,)
    # serving_default with two heads: one more request per head, filtered to it
    assert sorted(tuple(e.predict_log.request.output_filter) for e in logs if e.predict_log.request.output_filter) \
        == [("ctr",), ("score",)]
    text = decode_warmup_file(os.path.join(path, "assets.extra", WARMUP_FILE))
    assert len(text) == len(logs) and "string_val: ..." in text[0] and "\\" not in text[0]


def test_existing_version_is_never_overwritten(trained, standalone):
    model_dir, _, _ = trained
    base = os.path.dirname(standalone)
    assert os.path.basename(standalone) == str(STEPS[-1])        # global_step_as_timestamp
    marker = os.path.join(standalone, "marker")
    open(marker, "w").close()
    try:
        assert _exporter(model_dir, base).export_saved_model().decode() == standalone and os.path.exists(marker)
    finally:
        os.remove(marker)
    assert [p for p in os.listdir(base) if p.startswith(".")] == []


def test_distributed_export_reshards_rows(trained, distributed_export):
    """Checkpoint of 3 training shards, export for 2 serving shards: each holds exactly the ids it owns."""
    model_dir, _, examples = trained
    out = distributed_export
    m = SERVING_SHARDS
    assert sorted(out) == ["entry", *(f"ps_{i}" for i in range(m))] and out["entry"].endswith(f"entry/{STEPS[-1]}")
    reader = CheckpointReader.open(model_dir)
    all_ids, all_values = reader.table_rows("f1")
    seen = []
    for i in range(m):
        shard = tf.saved_model.load(out[f"ps_{i}"])
        assert {"lookup", "raw_lookup", "hashtable_assign"} <= set(shard.signatures)
        ids = shard.tables.by_name["f1"].ids.numpy() if hasattr(shard, "tables") else None
        assert ids is not None and (np.mod(ids, m) == i).all()
        seen.extend(ids.tolist())
        raw = shard.signatures["raw_lookup"](id=tf.constant(np.concatenate([ids[:1], ids[:2]])),
                                             id_split=tf.constant([0, 1, 3], tf.int64))["flat_emb"].numpy()
        f0_ids, f0_values = reader.table_rows("f0")
        want_f0 = f0_values[list(f0_ids).index(ids[0])] if ids[0] in f0_ids else np.zeros(4)
        want_f1 = all_values[[list(all_ids).index(x) for x in ids[:2]]]
        np.testing.assert_array_equal(raw, np.concatenate([want_f0, want_f1.reshape(-1)]))
    assert sorted(seen) == sorted(all_ids.tolist())
    entry = tf.saved_model.load(out["entry"])
    ids = entry.signatures["embedding_ids"](examples=tf.constant(examples[:5]))
    assert {"id", "id_split", "feat__f2__values", "feat__f2__splits", "feat__label", "pos__f2"} <= set(ids)
    # every table's distinct ids in one tensor, f0's then f1's (name order), with offsets, as raw_lookup takes them
    flat, split = ids["id"].numpy(), ids["id_split"].numpy()
    assert split.size == 3 and split[0] == 0 and split[-1] == flat.size
    assert all(np.unique(flat[split[i]:split[i + 1]]).size == split[i + 1] - split[i] > 0 for i in range(2))


def test_bad_checkpoints_get_clear_errors(trained, tmp_path):
    model_dir, _, _ = trained
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        StandaloneExporter(ServingDNN(), str(tmp_path / "empty"), str(tmp_path / "e")).export_saved_model()
    broken = tmp_path / "broken"
    os.system(f"cp -r {model_dir} {broken}")
    latest = sorted(p for p in os.listdir(broken) if p.startswith("ckpt-"))[-1]
    chunk = next((broken / latest).glob("shard-0-of-*/t*/rows-00000.bin"))
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with pytest.raises(CheckpointError, match=f"{chunk.parent}"):
        StandaloneExporter(ServingDNN(), str(broken), str(tmp_path / "e")).export_saved_model(
            checkpoint_path=str(broken / latest))
    assert not (tmp_path / "e").exists() or not [p for p in os.listdir(tmp_path / "e") if not p.startswith(".")]
