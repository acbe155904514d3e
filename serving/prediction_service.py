"""TensorFlow Serving's `PredictionService` and `ModelService` over gRPC, for unmodified TF Serving clients.

Thin handlers over `ModelVersions`/`Servable`: requests arrive as bytes and are parsed here (a garbage
message is INVALID_ARGUMENT, not a crash), every error answers with its `ps.errors` status
(`status_of`), and anything unexpected is INTERNAL with the traceback logged; the server keeps serving
in every case. Every call is counted and timed (`serving.metrics`).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    predict_pb2,
    regression_pb2,
    status_pb2,
)

from ps.errors import PSFailedPrecondition, PSInvalidArgument, PSNotFound, PSUnimplemented, status_of
from serving import metrics
from serving.model_versions import ModelVersions
from serving.tensors import to_numpy, to_proto

log = logging.getLogger(__name__)

PREDICTION_SERVICE = "tensorflow.serving.PredictionService"
MODEL_SERVICE = "tensorflow.serving.ModelService"
DEFAULT_SIGNATURE = "serving_default"


class PredictionServer:
    def __init__(self, versions: ModelVersions) -> None:
        self.versions = versions

    # -- plumbing -------------------------------------------------------------------------------
    def handlers(self) -> list[grpc.GenericRpcHandler]:
        prediction = {
            "Predict": (predict_pb2.PredictRequest, self.predict),
            "GetModelMetadata": (get_model_metadata_pb2.GetModelMetadataRequest, self.get_model_metadata),
            "Classify": (classification_pb2.ClassificationRequest, self.classify),
            "Regress": (regression_pb2.RegressionRequest, self.regress),
            "MultiInference": (None, self._unimplemented("MultiInference")),
        }
        models = {
            "GetModelStatus": (get_model_status_pb2.GetModelStatusRequest, self.get_model_status),
            "HandleReloadConfigRequest": (None, self._unimplemented("HandleReloadConfigRequest")),
        }
        return [self._service(PREDICTION_SERVICE, prediction), self._service(MODEL_SERVICE, models)]

    def _service(self, service: str, methods: dict) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(service, {
            name: grpc.unary_unary_rpc_method_handler(self._wrap(name, cls, fn), request_deserializer=None,
                                                      response_serializer=lambda r: r.SerializeToString())
            for name, (cls, fn) in methods.items()})

    def _wrap(self, method: str, request_cls, fn: Callable):
        model = self.versions.name
        latency = metrics.LATENCY.labels(model, method)

        def call(raw: bytes, context: grpc.ServicerContext):
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                request = None
                if request_cls is not None:
                    try:
                        request = request_cls.FromString(raw)
                    except DecodeError as exc:
                        raise PSInvalidArgument(f"malformed {request_cls.__name__} ({len(raw)} bytes): {exc}") \
                            from None
                return fn(request)
            except Exception as exc:  # one bad request must never take the server down
                code = grpc.StatusCode[status_of(exc)]
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
                else:
                    log.info("%s rejected (%s): %s", method, code.name, exc)
                context.abort(code, f"{method}: {exc}")
            finally:
                latency.observe(time.perf_counter() - start)
                metrics.REQUESTS.labels(model, method, code.name).inc()

        return call

    @staticmethod
    def _unimplemented(method: str):
        def fn(_request):
            raise PSUnimplemented(f"{method} is not supported by this server")

        return fn

    def _servable(self, spec: model_pb2.ModelSpec):
        if spec.name and spec.name != self.versions.name:
            raise PSNotFound(f"unknown model {spec.name!r}; this server serves {self.versions.name!r}")
        if spec.version_label:
            raise PSNotFound(f"version labels are not supported (got {spec.version_label!r}); name a version number")
        return self.versions.get(spec.version.value if spec.HasField("version") else None)

    @staticmethod
    def _spec(servable, signature: str) -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature)
        spec.version.value = servable.version
        return spec

    # -- PredictionService ------------------------------------------------------------------------
    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        servable = self._servable(request.model_spec)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        inputs = {name: to_numpy(name, proto) for name, proto in request.inputs.items()}
        outputs = servable.predict(signature, inputs, request.output_filter)
        response = predict_pb2.PredictResponse(model_spec=self._spec(servable, signature))
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(to_proto(value))
        metrics.ROWS.labels(self.versions.name).inc(max((v.shape[0] for v in inputs.values() if v.ndim), default=1))
        return response

    def get_model_metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if fields != ["signature_def"]:
            raise PSInvalidArgument(f"metadata_field must be ['signature_def'] (the only metadata served), "
                                    f"got {fields}")
        servable = self._servable(request.model_spec)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in servable.public.items():
            sig_map.signature_def[name].CopyFrom(sig)
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=self._spec(servable, ""))
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def _examples_signature(self, request, method: str):
        """(servable, signature, its single string input) for Classify/Regress over tf.train.Examples."""
        servable = self._servable(request.model_spec)
        signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
        sig = servable.signature(signature)
        if len(sig.inputs) != 1 or next(iter(sig.inputs.values())).dtype != 7:  # DT_STRING
            raise PSFailedPrecondition(f"{method} needs a signature with one string input (serialized "
                                     f"tf.train.Examples); {signature!r} takes {sorted(sig.inputs)}")
        kind = request.input.WhichOneof("kind")
        if kind == "example_list":
            examples = list(request.input.example_list.examples)
        elif kind == "example_list_with_context":
            ctx = request.input.example_list_with_context.context
            examples = []
            for ex in request.input.example_list_with_context.examples:
                merged = example_pb2.Example()
                merged.CopyFrom(ctx)
                merged.MergeFrom(ex)
                examples.append(merged)
        else:
            raise PSInvalidArgument(f"{method}: request.input holds no examples")
        if not examples:
            raise PSInvalidArgument(f"{method}: request.input holds no examples")
        serialized = np.array([e.SerializeToString() for e in examples], dtype=object)
        outputs = servable.predict(signature, {next(iter(sig.inputs)): serialized})
        return servable, signature, outputs, len(examples)

    @staticmethod
    def _per_example(outputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
        """Float outputs with one value per example ([n] or [n, 1]), by name."""
        return {k: np.reshape(v, [-1]) for k, v in sorted(outputs.items())
                if v.dtype.kind == "f" and v.size == n and v.shape[:1] == (n,)}

    def classify(self, request) -> classification_pb2.ClassificationResponse:
        servable, signature, outputs, n = self._examples_signature(request, "Classify")
        response = classification_pb2.ClassificationResponse(model_spec=self._spec(servable, signature))
        if "scores" in outputs or "classes" in outputs:
            scores = outputs.get("scores")
            classes = outputs.get("classes")
            width = (scores if scores is not None else classes).reshape(n, -1).shape[1]
            for i in range(n):
                c = response.result.classifications.add()
                for j in range(width):
                    c.classes.add(label=classes.reshape(n, -1)[i, j].decode() if classes is not None else str(j),
                                  score=float(scores.reshape(n, -1)[i, j]) if scores is not None else 0.0)
            return response
        heads = self._per_example(outputs, n)
        if not heads:
            raise PSFailedPrecondition(f"signature {signature!r} cannot classify: it has no scores/classes outputs "
                                     f"nor float outputs with one value per example ({sorted(outputs)})")
        for i in range(n):
            c = response.result.classifications.add()
            for head, values in heads.items():
                c.classes.add(label=head, score=float(values[i]))
        return response

    def regress(self, request) -> regression_pb2.RegressionResponse:
        servable, signature, outputs, n = self._examples_signature(request, "Regress")
        heads = self._per_example(outputs, n)
        value = heads.get("outputs", next(iter(heads.values())) if len(heads) == 1 else None)
        if value is None:
            raise PSFailedPrecondition(f"signature {signature!r} cannot regress: it needs one float output with one "
                                     f"value per example (or one named 'outputs'), has {sorted(outputs)}")
        response = regression_pb2.RegressionResponse(model_spec=self._spec(servable, signature))
        for v in value:
            response.result.regressions.add(value=float(v))
        return response

    # -- ModelService -----------------------------------------------------------------------------
    def get_model_status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        spec = request.model_spec
        if spec.name and spec.name != self.versions.name:
            raise PSNotFound(f"unknown model {spec.name!r}; this server serves {self.versions.name!r}")
        State = get_model_status_pb2.ModelVersionStatus.State
        statuses: list[tuple[int, int, str | None]] = [(v, State.AVAILABLE, None)
                                                       for v in self.versions.loaded_versions]
        statuses += [(v, State.END, f.message) for v, f in sorted(self.versions.failed.items())]
        if spec.HasField("version"):
            statuses = [s for s in statuses if s[0] == spec.version.value]
            if not statuses:
                raise PSNotFound(f"model {self.versions.name!r} has no version {spec.version.value}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state, error in statuses:
            status = response.model_version_status.add(version=version, state=state)
            if error:
                status.status.CopyFrom(status_pb2.StatusProto(error_code=13, error_message=error))  # INTERNAL
        return response
