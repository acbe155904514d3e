"""RemotePredictHelper (the seed's export_utils test, made real: the signature is exported, served and called),
the demo predictors, the TensorBoard graph writer and the warmup CLI, against an in-process server."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import tensorflow as tf

from ps.config import ServerConfig
from ps.service.server import serve
from serving import demo_predictor, demo_predictor_client
from serving.model_versions import ModelVersions
from serving.prediction_service import PredictionServer
from serving.remote_predict import RemotePredictHelper, _get_tensor_signature_name
from serving.servable import Servable
from serving.warmup_replay import replay
from worker.export import export_context
from worker.export.export_context import ExportMode
from worker.export.saved_model_exporters import _context_signatures
from worker.export.saved_model_graph import import_to_tensorboard


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("remote")
    with export_context.enter_export_mode(ExportMode.STANDALONE) as ctx:
        helper = RemotePredictHelper("test_func", {"a": tf.constant([1], tf.int64), "b": tf.constant([2], tf.int64)},
                                     lambda d: d["a"] * 3 + d["b"] * 4, export_ctx=ctx)
        signatures = _context_signatures(ctx, "entry")
    assert list(signatures) == ["test_func"]
    signatures["serving_default"] = signatures["test_func"]
    tf.saved_model.save(tf.Module(), str(base / "1"), signatures=signatures)
    versions = ModelVersions("default", base, lambda v, path: Servable("default", v, path), replay)
    assert versions.refresh() == [1]
    stop, ready = threading.Event(), threading.Event()
    port = []
    thread = threading.Thread(target=serve, args=(PredictionServer(versions).handlers(),
                                                  ServerConfig(port=0, grace_s=1)),
                              kwargs=dict(stop=stop, on_ready=lambda p: (port.append(p), ready.set())))
    thread.start()
    assert ready.wait(60)
    try:
        yield helper, f"127.0.0.1:{port[0]}", str(base / "1")
    finally:
        stop.set()
        thread.join(30)


def test_remote_predict_helper_calls_the_served_signature(served):
    helper, address, _ = served
    assert _get_tensor_signature_name("foo:0") == "foo_0"
    out = helper.call_remote_predict("nope", old_model_name="default", address=address)  # legacy name fallback
    assert isinstance(out, tf.Tensor) and out.numpy().tolist() == [11]
    inputs = {"a": tf.constant([2, 0], tf.int64), "b": tf.constant([1, 5], tf.int64)}
    out = helper.call_remote_predict("default", inputs, address=address)
    assert out.numpy().tolist() == [10, 20]


def test_demo_predictors_fill_inputs_from_dtypes(served, capsys):
    _, address, path = served
    rng = np.random.default_rng(0)
    got = {}
    outputs = demo_predictor.predict(path, "test_func", lambda sig: got.setdefault(
        "inputs", demo_predictor.fill_inputs(sig, 5, None, rng, 50)))
    a, b = got["inputs"]["a"], got["inputs"]["b"]
    assert a.shape == (5,) and a.dtype == np.int64 and (a < 50).all()
    np.testing.assert_array_equal(outputs["output"], a * 3 + b * 4)
    assert demo_predictor_client.main(["--server", address, "--signature-name", "test_func", "--batch-size", "3"]) == 0
    printed = capsys.readouterr().out
    assert "signatures: ['serving_default', 'test_func']" in printed and "output: shape [3]" in printed


def test_saved_model_graph_for_tensorboard(served, tmp_path):
    _, _, path = served
    import_to_tensorboard(path, str(tmp_path / "logs"))
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))
    with pytest.raises(ValueError, match="not a readable SavedModel"):
        import_to_tensorboard(str(tmp_path), str(tmp_path / "logs2"))


def test_warmup_cli_generates_and_decodes(tmp_path, capsys):
    from launch.cli import main

    out = tmp_path / "warmup"
    assert main(["warmup", "gen", "--output-path", str(out), "--variant-type", "instance", "--fidv1-slots", "1,2",
                 "--batch-size", "4", "--max-records", "8"]) == 0
    assert main(["warmup", "decode", "--file-name", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("--- request") == 2 and 'key: "instances"' in text and "string_val: ..." in text


def test_serve_config_is_checked_where_the_flags_enter():
    import argparse

    from serving import serve_main
    from serving.config import ServeConfig

    parser = argparse.ArgumentParser()
    serve_main.add_arguments(parser)
    config = serve_main.config_of(parser.parse_args(["--export-base", "e", "--port", "0", "--ps-addresses",
                                                     "h:1,h:2", "--max-batch-size", "16", "--merge-requests",
                                                     "--concurrent-batches", "3"]))
    assert config.ps_addresses == ("h:1", "h:2") and config.max_batch_size == 16
    assert config.merge_requests and config.concurrent_batches == 3
    assert not serve_main.config_of(parser.parse_args(["--export-base", "e", "--port", "0"])).merge_requests
    assert config.server.max_message_bytes == ServeConfig(export_base="e").server.max_message_bytes  # one default
    for flags, message in ((["--max-batch-size", "0"], "--max-batch-size must be >= 1"),
                           (["--ps-addresses", "nohost"], "--ps-addresses must be host:port"),
                           (["--keep-versions", "0"], "--keep-versions must be >= 1"),
                           (["--concurrent-batches", "0"], "--concurrent-batches must be >= 1")):
        with pytest.raises(ValueError, match=message):
            serve_main.config_of(parser.parse_args(["--export-base", "e", "--port", "0", *flags]))
