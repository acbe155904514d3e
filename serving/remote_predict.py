"""`RemotePredictHelper`: one signature defined from a function, and the call of that signature on a model
served elsewhere over TF Serving's Predict (our server or TensorFlow Serving itself).

The original called a remote model from inside the graph with a custom op; ours calls it from Python over
gRPC, so it needs no op. Inputs and outputs keep the caller's nested structure; signature keys are the
structure's paths ("a", "x_0", ...), made identifiers.
"""
from __future__ import annotations

import re

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.tensors import to_proto


def _get_tensor_signature_name(name: str) -> str:
    """A tensor or path name as a signature key: "foo:0" -> "foo_0", "x/0" -> "x_0"."""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _paths(structure, prefix: str = "") -> list[tuple[str, object]]:
    """(path, leaf) in tf.nest.flatten's order (dict keys sorted), paths joined with '/'."""
    if isinstance(structure, dict):
        return [p for k in sorted(structure) for p in _paths(structure[k], f"{prefix}/{k}" if prefix else str(k))]
    if isinstance(structure, (list, tuple)):
        return [p for i, v in enumerate(structure) for p in _paths(v, f"{prefix}/{i}" if prefix else str(i))]
    return [(prefix, structure)]


def _spec(value) -> tf.TensorSpec:
    t = tf.convert_to_tensor(value)
    shape = t.shape.as_list()
    return tf.TensorSpec([None, *shape[1:]] if shape else [], t.dtype)


class RemotePredictHelper:
    def __init__(self, name: str, input_tensors, remote_func, export_ctx=None, sub_model: str = "entry",
                 address: str | None = None, timeout_s: float = 30.0) -> None:
        self._name = name
        self._input_tensors = input_tensors
        self._remote_func = remote_func
        self._address, self._timeout_s = address, timeout_s
        self._channel: tuple[str, grpc.Channel] | None = None
        self._define_remote_func(export_ctx, sub_model)

    def _define_remote_func(self, export_ctx, sub_model: str) -> None:
        paths = _paths(self._input_tensors)
        self._input_names = [_get_tensor_signature_name(p) or f"input_{i}" for i, (p, _) in enumerate(paths)]
        if len(set(self._input_names)) != len(self._input_names):
            raise ValueError(f"input names {self._input_names} collide")
        self.input_specs = {n: _spec(v) for n, (_, v) in zip(self._input_names, paths)}
        structure = self._input_tensors

        def signature(**inputs):
            nested = tf.nest.pack_sequence_as(structure, [inputs[n] for n in self._input_names])
            return self._flat_outputs(self._remote_func(nested))

        self.signature_function = signature
        nested_specs = tf.nest.pack_sequence_as(structure, list(self.input_specs.values()))
        traced = tf.function(self._remote_func, autograph=False).get_concrete_function(nested_specs)
        self._output_structure = traced.structured_outputs
        self.output_names = list(self._flat_outputs(self._output_structure))
        if export_ctx is not None:
            export_ctx.add_signature(sub_model, self._name, self.input_specs, signature)

    def _flat_outputs(self, outputs) -> dict:
        paths = _paths(outputs)
        names = [_get_tensor_signature_name(p) or "output" for p, _ in paths]
        if len(set(names)) != len(names):
            raise ValueError(f"output names {names} collide")
        return {n: v for n, (_, v) in zip(names, paths)}

    def _stub(self, address: str | None):
        address = address or self._address
        if not address:
            raise ValueError("no server address: pass address= to RemotePredictHelper or call_remote_predict")
        if self._channel is None or self._channel[0] != address:
            self._channel = (address, grpc.insecure_channel(address))
        return prediction_service_pb2_grpc.PredictionServiceStub(self._channel[1])

    def call_remote_predict(self, model_name: str, input_tensors=None, old_model_name: str | None = None,
                            task: int = 0, address: str | None = None):
        """Predict signature `name` of `model_name` (or, if that model is unknown there, `old_model_name`)
        with `input_tensors` (default: the constructor's); returns tensors in the function's structure."""
        values = tf.nest.flatten(self._input_tensors if input_tensors is None else input_tensors)
        stub = self._stub(address)
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = self._name
        for name, value in zip(self._input_names, values):
            request.inputs[name].CopyFrom(to_proto(tf.convert_to_tensor(value)))
        for candidate in [model_name] + ([old_model_name] if old_model_name else []):
            request.model_spec.name = candidate
            try:
                response = stub.Predict(request, timeout=self._timeout_s)
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND or candidate == (old_model_name or model_name):
                    raise
        outputs = [tf.convert_to_tensor(tf.make_ndarray(response.outputs[n])) for n in self.output_names]
        return tf.nest.pack_sequence_as(self._output_structure, outputs)

    def close(self) -> None:
        if self._channel is not None:
            self._channel[1].close()
            self._channel = None

