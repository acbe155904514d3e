"""Fill every input of a signature from its dtype (the demo predictors): serialized Monolith samples for
string inputs, random ints for int64, uniform floats for float32; unknown dims become the batch size."""
from __future__ import annotations

import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2

from services.sample_gen import ParserArgs, gen_serialized

DT_FLOAT, DT_INT64, DT_STRING = 1, 9, 7


def fill_inputs(signature: meta_graph_pb2.SignatureDef, batch_size: int, parser_args: ParserArgs,
                rng: np.random.Generator, max_id: int = 100) -> dict[str, np.ndarray]:
    out = {}
    for name, info in signature.inputs.items():
        dims = [batch_size if d.size < 0 else d.size for d in info.tensor_shape.dim]
        if info.dtype == DT_STRING:
            if len(dims) != 1:
                raise ValueError(f"input {name!r}: string inputs must be 1-D batches of serialized samples, "
                                 f"shape {dims}")
            out[name] = np.array(gen_serialized(parser_args, rng, dims[0]), dtype=object)
        elif info.dtype == DT_INT64:
            out[name] = rng.integers(0, max_id, size=dims, dtype=np.int64)
        elif info.dtype == DT_FLOAT:
            out[name] = rng.random(dims, dtype=np.float32)
        else:
            raise ValueError(f"input {name!r}: cannot generate dtype {info.dtype} (string, int64, float32 only)")
    return out


def parser_args_from_flags(use_example: bool, sparse_features: str, fidv1_slots: str, batch_size: int) -> ParserArgs:
    return ParserArgs("example" if use_example else "instance",
                      fidv1_features=[int(s) for s in filter(None, fidv1_slots.split(","))],
                      sparse_features=list(filter(None, sparse_features.split(","))), batch_size=batch_size)


def add_sample_flags(parser) -> None:
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--use-example", action="store_true", help="Monolith Examples (default: Instances)")
    parser.add_argument("--sparse-features", default="", help="named fid features of the samples (comma-separated)")
    parser.add_argument("--fidv1-slots", default="0,1,2,3,4,5", help="Instance v1 fid slots (comma-separated)")
    parser.add_argument("--max-id", type=int, default=100, help="random int64 inputs are in [0, max-id)")
    parser.add_argument("--seed", type=int, default=0)
