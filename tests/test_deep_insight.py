"""Deep insight messages: deterministic uid sampling, single/multi-target branches, dump file, tf.function."""
import json

import numpy as np
import pytest
from prometheus_client import REGISTRY

from worker.modeling.deep_insight import hit_sample_ratio, uid_hash, write_deep_insight


def _splitmix64_reference(x: int) -> int:
    """splitmix64's finalizer written with Python ints (independent of the numpy implementation)."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_hash_matches_a_python_reference():
    uids = [0, 1, 2, 12345678901, -1, -(2**63), 2**63 - 1]
    expected = [_splitmix64_reference(u & ((1 << 64) - 1)) for u in uids]
    assert uid_hash(np.array(uids, dtype=np.int64)).tolist() == expected
    # splitmix64 with seed 0 yields this first value (published test vector of the generator)
    assert _splitmix64_reference(0) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("ratio", [0.01, 0.1, 0.5, 0.9])
def test_sampling_rate_is_close_to_the_ratio_over_100k_uids(ratio):
    uids = np.arange(100_000, dtype=np.int64) + 10_000_000
    random_uids = np.random.default_rng(7).integers(0, 2**62, 100_000)
    # within 1% (relative) of the ratio; at 0.01 that is below one binomial sigma (3%), so 3 sigma there
    tolerance = max(0.01 * ratio, 3 * (ratio * (1 - ratio) / 100_000) ** 0.5) if ratio < 0.1 else 0.01 * ratio
    for ids in (uids, random_uids):
        rate = hit_sample_ratio(ids, ratio).mean()
        assert abs(rate - ratio) <= tolerance, (ratio, rate)


def test_sampling_is_deterministic_and_nested():
    uids = np.random.default_rng(1).integers(-(2**63), 2**63 - 1, 50_000)
    first = hit_sample_ratio(uids, 0.2)
    assert np.array_equal(first, hit_sample_ratio(uids.copy(), 0.2))
    shuffled = np.random.default_rng(2).permutation(len(uids))
    assert np.array_equal(first[shuffled], hit_sample_ratio(uids[shuffled], 0.2))
    assert np.all(hit_sample_ratio(uids, 0.5)[first])
    assert not hit_sample_ratio(uids, 0.0).any() and hit_sample_ratio(uids, 1.0).all()
    with pytest.raises(ValueError, match="sample_ratio must be in"):
        hit_sample_ratio(uids, 1.5)


def _features(n=8, start=100):
    return {"uid": np.arange(start, start + n, dtype=np.int64), "req_time": np.full((n, 1), 1_664_236_800),
            "sample_rate": np.full(n, 0.5, dtype=np.float32)}


def test_missing_req_time_disables(caplog):
    f = _features()
    del f["req_time"]
    with caplog.at_level("INFO"):
        out = write_deep_insight(f, 1.0, "m", labels=np.ones(8), preds=np.ones(8), enable_kafka_metrics=True)
    assert len(out) == 0
    assert "Disabling deep_insight because req_time is absent" in caplog.text


def test_single_target_messages():
    labels = np.arange(8, dtype=np.float32) % 2
    preds = np.linspace(0.1, 0.8, 8, dtype=np.float32).reshape(8, 1)
    out = write_deep_insight(_features(), 1.0, "ffm", labels=labels, preds=preds, target="ctr",
                             enable_kafka_metrics=True, use_zero_train_time=True)
    assert out.shape == (8,)
    msgs = [json.loads(m) for m in out]
    assert msgs[3] == {
        "model_name": "ffm", "uid": 103, "req_time": 1_664_236_800, "train_time": 0, "targets": ["ctr"],
        "predict": {"ctr": pytest.approx(float(preds[3, 0]))}, "label": {"ctr": 1.0}, "sample_rate": {"ctr": 0.5},
        "sample_ratio": 1.0, "container": msgs[3]["container"], "extra_float": {}, "extra_int": {}, "extra_str": {},
    }
    assert msgs[0]["predict"] == {"ctr": pytest.approx(0.1)}


def test_messages_only_when_they_have_somewhere_to_go():
    before = REGISTRY.get_sample_value("monolith_training_deep_insight_sampled_total", {"model_name": "quiet"}) or 0
    out = write_deep_insight(_features(), 1.0, "quiet", labels=np.ones(8), preds=np.ones(8))
    assert out.tolist() == [b""] * 8
    after = REGISTRY.get_sample_value("monolith_training_deep_insight_sampled_total", {"model_name": "quiet"})
    assert after - before == 8
    assert REGISTRY.get_sample_value("monolith_training_deep_insight_examples_total", {"model_name": "quiet"}) >= 8


def test_unsampled_examples_give_empty_strings():
    f = _features(n=2000, start=0)
    out = write_deep_insight(f, 0.25, "m", labels=np.zeros(2000), preds=np.zeros(2000), enable_kafka_metrics=True)
    kept = np.array([len(m) > 0 for m in out])
    assert np.array_equal(kept, hit_sample_ratio(f["uid"], 0.25))
    assert {json.loads(m)["uid"] for m in out if m} == set(f["uid"][kept].tolist())


def test_multi_target_messages_with_extra_fields():
    f = _features(n=4)
    f["item_id"] = np.array([7, 8, 9, 10], dtype=np.int64)
    f["score"] = np.array([0.5, 1.5, 2.5, np.nan], dtype=np.float32)
    f["channel"] = np.array([b"feed", b"search", b"feed", b"ads"], dtype=object)
    keys = ["item_id", "score", "channel"]
    out = write_deep_insight(
        f, 1.0, "mmoe", targets=["click", "like"],
        labels_list=[np.array([1, 0, 1, 0.0]), None, np.array([[0], [0], [1], [1.0]])],
        preds_list=[np.array([0.9, 0.1, 0.8, 0.2]), np.array([0.3, 0.3, 0.6, 0.7])],
        sample_rates_list=[np.full(4, 0.1), np.full(4, 0.2)], extra_fields_keys=keys, dump_filename="",
        enable_kafka_metrics=True)
    assert keys == ["item_id", "score", "channel"]
    m = json.loads(out[2])
    assert m["targets"] == ["click", "like"]
    assert m["label"] == {"click": 1.0, "like": 1.0}
    assert m["predict"] == {"click": pytest.approx(0.8), "like": pytest.approx(0.6)}
    assert m["sample_rate"] == {"click": pytest.approx(0.1), "like": pytest.approx(0.2)}
    assert m["extra_int"] == {"item_id": 9, "uid": 102}
    assert m["extra_float"] == {"score": 2.5}
    assert m["extra_str"] == {"channel": "feed"}
    assert m["uid"] == 102
    assert json.loads(out[3])["extra_float"] == {"score": None}


def test_multi_target_defaults_and_errors():
    f = _features(n=3)
    out = write_deep_insight(f, 1.0, "m", targets=["a", "b"], labels_list=[np.ones(3), np.zeros(3)],
                             preds_list=[np.ones(3), np.zeros(3)], enable_kafka_metrics=True)
    assert json.loads(out[0])["sample_rate"] == {"a": 0.5, "b": 0.5}
    with pytest.raises(TypeError, match="sample_rates_list must be a list or tuple, got ndarray"):
        write_deep_insight(f, 1.0, "m", targets=["a"], labels_list=[np.ones(3)], preds_list=[np.ones(3)],
                           sample_rates_list=np.ones(3))
    with pytest.raises(ValueError, match="preds_list has 1 vectors for 2 targets"):
        write_deep_insight(f, 1.0, "m", targets=["a", "b"], labels_list=[np.ones(3)] * 2, preds_list=[np.ones(3)])
    with pytest.raises(KeyError, match="'item_id'"):
        write_deep_insight(f, 1.0, "m", targets=["a"], labels_list=[np.ones(3)], preds_list=[np.ones(3)],
                           extra_fields_keys=["item_id"])


def test_bad_single_target_inputs_are_named():
    f = _features(n=3)
    with pytest.raises(ValueError, match="'preds' has 2 values, expected 3"):
        write_deep_insight(f, 1.0, "m", labels=np.ones(3), preds=np.ones(2))
    with pytest.raises(ValueError, match="'labels' contains NaN/Inf at example 1"):
        write_deep_insight(f, 1.0, "m", labels=np.array([0, np.nan, 1]), preds=np.ones(3))
    del f["uid"]
    with pytest.raises(KeyError, match="needs feature 'uid'"):
        write_deep_insight(f, 1.0, "m", labels=np.ones(3), preds=np.ones(3))


def test_dump_file_receives_the_sampled_messages(tmp_path):
    import tensorflow as tf

    from worker.modeling.deep_insight import deep_insight_client

    path = str(tmp_path / "di.tfrecord")
    f = _features(n=500, start=0)
    out = write_deep_insight(f, 0.3, "dumped", labels=np.zeros(500), preds=np.zeros(500), dump_filename=path)
    deep_insight_client(True, True, path).close()
    dumped = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    assert len(dumped) == hit_sample_ratio(f["uid"], 0.3).sum()
    assert [m for m in out if m] == dumped


def test_usable_inside_tf_function():
    import tensorflow as tf

    from worker.modeling.deep_insight import write_deep_insight_tf

    @tf.function
    def step(uid, req_time, rate, label, pred):
        features = {"uid": uid, "req_time": req_time, "sample_rate": rate, "unused": tf.zeros([3])}
        return write_deep_insight_tf(features, 1.0, "tf_model", labels=label, preds=pred,
                                     enable_kafka_metrics=True, use_zero_train_time=True)

    out = step(tf.constant([5, 6, 7], tf.int64), tf.constant([1, 2, 3], tf.int64), tf.ones([3]),
               tf.constant([0.0, 1.0, 0.0]), tf.constant([0.25, 0.5, 0.75]))
    msgs = [json.loads(m) for m in out.numpy()]
    assert [m["uid"] for m in msgs] == [5, 6, 7]
    assert [m["predict"]["ctr_head"] for m in msgs] == [0.25, 0.5, 0.75]
