"""Replay a version's TF Serving warmup file (a TFRecord of PredictionLogs) before it takes traffic."""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.tensors import to_numpy


def replay(servable, path: str | Path) -> int:
    """Run every predict request of the file through `servable`; the first failure fails the load."""
    count = 0
    for i, raw in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
        entry = prediction_log_pb2.PredictionLog()
        try:
            entry.ParseFromString(raw)
        except Exception as exc:  # protobuf's DecodeError
            raise ValueError(f"{path}: record {i} is not a PredictionLog ({exc})") from None
        if entry.WhichOneof("log_type") != "predict_log":
            continue
        request = entry.predict_log.request
        inputs = {name: to_numpy(name, proto) for name, proto in request.inputs.items()}
        try:
            servable.predict(request.model_spec.signature_name or "serving_default", inputs, request.output_filter)
        except Exception as exc:
            raise ValueError(f"warmup request {i} of {path} failed: {exc}") from exc
        count += 1
    return count
