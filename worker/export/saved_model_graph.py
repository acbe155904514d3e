"""`monolith saved-model-graph`: write a SavedModel's graph where TensorBoard's graph view reads it."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def import_to_tensorboard(model_dir: str, log_dir: str) -> Path:
    """The single MetaGraph of `model_dir`/saved_model.pb as an event file under `log_dir`."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    path = Path(model_dir) / "saved_model.pb"
    try:
        saved.ParseFromString(path.read_bytes())
    except Exception as exc:  # OSError, DecodeError
        raise ValueError(f"{path}: not a readable SavedModel ({exc})") from None
    if len(saved.meta_graphs) != 1:
        raise ValueError(f"{path} has {len(saved.meta_graphs)} MetaGraphs; only single-MetaGraph models are shown")
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(saved.meta_graphs[0].graph_def, name="")
    writer = tf.summary.create_file_writer(log_dir)
    with writer.as_default():
        tf.summary.graph(graph)
    writer.flush()
    writer.close()
    return Path(log_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export-dir", required=True, help="a SavedModel version directory")
    parser.add_argument("--log-dir", required=True)


def main(args: argparse.Namespace) -> int:
    try:
        import_to_tensorboard(args.export_dir, args.log_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"graph written to {args.log_dir}; view it with: tensorboard --logdir {args.log_dir}")
    return 0
