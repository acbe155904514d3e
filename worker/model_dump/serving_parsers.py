"""The Monolith parsers a serving receiver calls, kept in the dump so an export from it ships the same warmup.

While a serving input is traced, the parsers of `worker.modeling.monolith_inputs` record what they read
(`ParserArgs`); the exporter generates its warmup requests from those records. A dumped receiver is a
SavedModel function that records nothing when called, so the dump keeps the records of its trace and the
replayed receiver records them again.
"""
from __future__ import annotations

from protos import model_dump_pb2 as pb
from services.sample_gen import DenseFeature, ParserArgs
from worker.modeling import monolith_inputs


def to_pb(args: ParserArgs) -> pb.ServingParser:
    return pb.ServingParser(
        variant_type=args.variant_type, fidv1_features=args.fidv1_features, sparse_features=args.sparse_features,
        dense_features=[pb.ServingParser.DenseFeature(name=d.name, dtype=d.dtype, shape=d.shape)
                        for d in args.dense_features],
        input_name=args.input_name or "", batch_size=args.batch_size, drop_rate=args.drop_rate)


def from_pb(parser: pb.ServingParser) -> ParserArgs:
    return ParserArgs(variant_type=parser.variant_type, fidv1_features=list(parser.fidv1_features),
                      sparse_features=list(parser.sparse_features),
                      dense_features=[DenseFeature(d.name, d.dtype, d.shape) for d in parser.dense_features],
                      input_name=parser.input_name or None, batch_size=parser.batch_size, drop_rate=parser.drop_rate)


def record(parsers) -> None:
    """Record the dumped parsers as if the receiver had just called them (inside a `recording()`)."""
    for parser in parsers:
        monolith_inputs.record(from_pb(parser))
