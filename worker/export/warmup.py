"""TF Serving warmup files: `assets.extra/tf_serving_warmup_requests`, a TFRecord of
`PredictionLog{predict_log{request}}` that a server replays before a model version takes traffic.

Requests come from random samples of what the serving input parses (`ParserArgs`, seeded), from a
framed file of real records (`services.pb_framing`), or from a folder of saved `PredictRequest`s. The
decoder prints a warmup file with the (long, binary) `string_val`s elided.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from services.pb_framing import FramingFlags, PBReader
from services.sample_gen import DenseFeature, ParserArgs, gen_serialized

log = logging.getLogger(__name__)

DEFAULT_MAX_RECORDS = 256

_DTYPES = {"float": tf.float32, "float32": tf.float32, "double": tf.float64, "float64": tf.float64,
           "int": tf.int64, "int64": tf.int64, "long": tf.int64, "int32": tf.int32, "string": tf.string,
           "bytes": tf.string}


def tf_dtype(name: str) -> tf.DType:
    """A dtype from its usual names (the original mapped int64 to a misspelt `tf.int46`)."""
    try:
        return _DTYPES[str(name).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; known: {sorted(_DTYPES)}") from None


def _request(model_name: str, signature: str, input_name: str | None, serialized: list[bytes],
             output_filter: Iterable[str] = ()) -> prediction_log_pb2.PredictionLog:
    if input_name is None:
        raise ValueError("ParserArgs.input_name is not set")
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature
    req.inputs[input_name].CopyFrom(tf.make_tensor_proto(np.array(serialized, dtype=object), dtype=tf.string))
    req.output_filter.extend(output_filter)
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))


def gen_prediction_log(args: ParserArgs, model_name: str = "entry", max_records: int = DEFAULT_MAX_RECORDS,
                       seed: int = 0, heads: Iterable[str] = ()) -> Iterator[prediction_log_pb2.PredictionLog]:
    """max_records // batch_size requests of random samples, signatures taken in turn; for serving_default
    with several heads, one more request per head filtered to that head."""
    rng = np.random.default_rng(seed)
    heads = list(heads)
    for i in range(max(1, max_records // args.batch_size)):
        signature = args.signature_name[i % len(args.signature_name)]
        serialized = gen_serialized(args, rng)
        yield _request(model_name, signature, args.input_name, serialized)
        if signature == "serving_default" and len(heads) > 1:
            for head in heads:
                yield _request(model_name, signature, args.input_name, serialized, [head])


def gen_prediction_log_from_file(path: str | os.PathLike, args: ParserArgs, model_name: str = "entry",
                                 flags: FramingFlags = FramingFlags(), max_records: int = DEFAULT_MAX_RECORDS
                                 ) -> Iterator[prediction_log_pb2.PredictionLog]:
    """Requests of `batch_size` real records each (one ExampleBatch per request) read from a framed file."""
    per_request = 1 if args.variant_type == "example_batch" else args.batch_size
    max_requests = max(1, max_records // per_request)
    batch: list[bytes] = []
    sent = 0
    with open(path, "rb") as fh:
        for record in PBReader(fh, flags):
            batch.append(record.payload)
            if len(batch) == per_request:
                yield _request(model_name, args.signature_name[sent % len(args.signature_name)], args.input_name, batch)
                batch, sent = [], sent + 1
                if sent >= max_requests:
                    return
    if batch:
        yield _request(model_name, args.signature_name[sent % len(args.signature_name)], args.input_name, batch)


def gen_prediction_log_from_requests(folder: str | os.PathLike, model_name: str = "default",
                                     signature: str = "serving_default"
                                     ) -> Iterator[prediction_log_pb2.PredictionLog]:
    """One warmup record per file of `folder`, each a serialized PredictRequest (model/signature reset)."""
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        req = predict_pb2.PredictRequest()
        try:
            req.ParseFromString(path.read_bytes())
        except Exception as exc:  # protobuf's DecodeError
            raise ValueError(f"{path} is not a serialized PredictRequest: {exc}") from None
        if not req.inputs:
            raise ValueError(f"{path}: the PredictRequest has no inputs")
        req.model_spec.name = model_name
        req.model_spec.signature_name = signature
        yield prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=req))


def write_warmup_file(path: str | os.PathLike, logs: Iterable[prediction_log_pb2.PredictionLog]) -> int:
    """Write logs as a TFRecord file (to a temporary name, then renamed); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    count = 0
    try:
        with tf.io.TFRecordWriter(str(tmp)) as writer:
            for entry in logs:
                writer.write(entry.SerializeToString())
                count += 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def gen_warmup_file(warmup_file: str | os.PathLike, args: ParserArgs, model_name: str = "entry",
                    max_records: int = DEFAULT_MAX_RECORDS, seed: int = 0, heads: Iterable[str] = ()) -> str:
    count = write_warmup_file(warmup_file, gen_prediction_log(args, model_name, max_records, seed, heads))
    log.info("wrote %d warmup requests to %s", count, warmup_file)
    return str(warmup_file)


def read_warmup_file(path: str | os.PathLike) -> list[prediction_log_pb2.PredictionLog]:
    out = []
    for i, raw in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
        entry = prediction_log_pb2.PredictionLog()
        try:
            entry.ParseFromString(raw)
        except Exception as exc:
            raise ValueError(f"{path}: record {i} is not a PredictionLog: {exc}") from None
        out.append(entry)
    return out


def decode_warmup_file(path: str | os.PathLike) -> list[str]:
    """Each request as text with `string_val` contents replaced by `...`."""
    return [re.sub(r"string_val: .*", "string_val: ...", str(entry.predict_log.request))
            for entry in read_warmup_file(path)]


# --- `monolith warmup` ------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    gen = sub.add_parser("gen", help="random requests, or requests of real records from a framed file")
    gen.add_argument("--output-path", required=True)
    gen.add_argument("--gen-type", choices=("random", "file"), default="random")
    gen.add_argument("--file-name", help="framed input file (--gen-type file)")
    gen.add_argument("--variant-type", choices=("instance", "example", "example_batch"), default="example")
    gen.add_argument("--sparse-features", default="", help="comma-separated named fid features")
    gen.add_argument("--fidv1-slots", default="", help="comma-separated Instance v1 slots")
    gen.add_argument("--dense-features", default="", help="comma-separated name[:dtype[:dim]]")
    gen.add_argument("--batch-size", type=int, default=64)
    gen.add_argument("--max-records", type=int, default=DEFAULT_MAX_RECORDS)
    gen.add_argument("--model-name", default="entry")
    gen.add_argument("--signature-name", default="serving_default", help="comma-separated")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--lagrangex-header", action="store_true")
    gen.add_argument("--no-sort-id", action="store_true")
    gen.add_argument("--kafka-dump", action="store_true")
    gen.add_argument("--kafka-dump-prefix", action="store_true")
    req = sub.add_parser("from-requests", help="a folder of serialized PredictRequests")
    req.add_argument("--input-folder", required=True)
    req.add_argument("--output-path", required=True)
    req.add_argument("--model-name", default="default")
    dec = sub.add_parser("decode", help="print a warmup file (string_val elided)")
    dec.add_argument("--file-name", required=True)


def _dense(spec: str) -> list[DenseFeature]:
    out = []
    for item in filter(None, spec.split(",")):
        name, dtype, dim = (item.split(":") + ["float32", "1"])[:3]
        out.append(DenseFeature(name, tf_dtype(dtype).name, int(dim)))
    return out


def main(args: argparse.Namespace) -> int:
    if args.action == "decode":
        for i, text in enumerate(decode_warmup_file(args.file_name)):
            print(f"--- request {i}\n{text}")
        return 0
    if args.action == "from-requests":
        count = write_warmup_file(args.output_path, gen_prediction_log_from_requests(args.input_folder,
                                                                                     args.model_name))
        print(f"wrote {count} warmup requests to {args.output_path}")
        return 0
    parser_args = ParserArgs(args.variant_type,
                             fidv1_features=[int(s) for s in filter(None, args.fidv1_slots.split(","))],
                             sparse_features=list(filter(None, args.sparse_features.split(","))),
                             dense_features=_dense(args.dense_features), batch_size=args.batch_size,
                             signature_name=list(filter(None, args.signature_name.split(","))))
    if args.gen_type == "file":
        if not args.file_name:
            raise SystemExit("--gen-type file needs --file-name")
        flags = FramingFlags(args.lagrangex_header, not args.no_sort_id, args.kafka_dump, args.kafka_dump_prefix)
        logs = gen_prediction_log_from_file(args.file_name, parser_args, args.model_name, flags, args.max_records)
    else:
        logs = gen_prediction_log(parser_args, args.model_name, args.max_records, args.seed)
    count = write_warmup_file(args.output_path, logs)
    print(f"wrote {count} warmup requests to {args.output_path}")
    return 0
