"""Query a PredictionService (ours or TensorFlow Serving) with generated inputs: the signature comes from
GetModelMetadata, every input is filled from its dtype (see request_inputs).

    python -m serving.demo_predictor_client --server HOST:PORT [--model-name default] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import sys

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from serving.request_inputs import add_sample_flags, fill_inputs, parser_args_from_flags


def get_signature_def(stub, model_name: str, signature_name: str, timeout_s: float = 30.0):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model_name
    response = stub.GetModelMetadata(request, timeout=timeout_s)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sig_map)
    print(f"signatures: {sorted(sig_map.signature_def)}")
    if signature_name not in sig_map.signature_def:
        raise ValueError(f"model {model_name!r} has no signature {signature_name!r}")
    return sig_map.signature_def[signature_name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:8500")
    parser.add_argument("--model-name", default="default")
    parser.add_argument("--signature-name", default="serving_default")
    add_sample_flags(parser)
    args = parser.parse_args(argv)
    parser_args = parser_args_from_flags(args.use_example, args.sparse_features, args.fidv1_slots, args.batch_size)
    with grpc.insecure_channel(args.server) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        signature = get_signature_def(stub, args.model_name, args.signature_name)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = args.model_name
        request.model_spec.signature_name = args.signature_name
        inputs = fill_inputs(signature, args.batch_size, parser_args, np.random.default_rng(args.seed), args.max_id)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        response = stub.Predict(request, timeout=30)
    for name, proto in response.outputs.items():
        value = tf.make_ndarray(proto)
        print(f"{name}: shape {list(value.shape)} {value.reshape(-1)[:8]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
