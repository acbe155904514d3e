"""`monolith export`: export a checkpoint of a model as SavedModels, without training.

The model is its class (`--model`) or a model dump (`--from-dump`: exported without importing the model's
module). Prints the export directories, one per line (`entry` last for a distributed export).
"""
from __future__ import annotations

import argparse
import logging
import os

from services import role_logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model class as pkg.module:Class")
    source.add_argument("--from-dump", metavar="DUMP_DIR",
                        help="a model dump (`monolith dump`): export it without importing the model's module")
    parser.add_argument("--model-dir", required=True, help="the checkpoint directory training wrote")
    parser.add_argument("--export-base", required=True)
    parser.add_argument("--mode", choices=("standalone", "distributed"), default="standalone")
    parser.add_argument("--checkpoint", type=int, default=None, help="global step to export (default: latest)")
    parser.add_argument("--num-serving-shards", type=int, default=1, help="serving PS shards (distributed)")
    parser.add_argument("--float16", action="store_true", help="store embedding rows as float16")
    parser.add_argument("--global-step-as-timestamp", action="store_true",
                        help="name the version by the global step instead of the export time")
    parser.add_argument("--warmup-file", default=None,
                        help="TF Serving warmup file to ship (generated there from random samples when missing)")
    parser.add_argument("--no-warmup", action="store_true", help="ship no warmup requests")


def exporter_for(model, model_dir: str, export_base: str, mode: str, num_serving_shards: int = 1, **kwargs):
    from worker.export.saved_model_exporters import DistributedExporter, StandaloneExporter

    if mode == "distributed":
        return DistributedExporter(model, model_dir, export_base, num_serving_shards=num_serving_shards, **kwargs)
    return StandaloneExporter(model, model_dir, export_base, **kwargs)


def build_model(model: str | None, from_dump: str | None):
    """A fresh model to export: the class `model` built with no arguments, or the dump `from_dump`."""
    if from_dump:
        from worker.model_dump.replay import DumpedModel

        return DumpedModel(from_dump)
    if not model:
        raise ValueError("no model to export: give --model pkg.module:Class or --from-dump DUMP_DIR")
    from worker.train_main import load_model_class

    return load_model_class(model)()


def main(args: argparse.Namespace) -> int:
    role_logging.configure("export", 0)
    try:
        model = build_model(args.model, args.from_dump)
    except ValueError as exc:  # worker.model_dump.dump_file.ModelDumpError among them
        log.error("%s", exc)
        return 2
    exporter = exporter_for(model, args.model_dir, args.export_base, args.mode, args.num_serving_shards,
                            float16=args.float16, global_step_as_timestamp=args.global_step_as_timestamp,
                            warmup_file=args.warmup_file, warmup=not args.no_warmup)
    checkpoint = os.path.join(args.model_dir, f"ckpt-{args.checkpoint}") if args.checkpoint is not None else None
    try:
        result = exporter.export_saved_model(checkpoint_path=checkpoint)
    except (ValueError, OSError) as exc:  # ps.errors.CheckpointError among them
        log.error("export failed: %s", exc)
        return 1
    dirs = result.values() if isinstance(result, dict) else [result]
    for d in dirs:
        print(d.decode() if isinstance(d, bytes) else d, flush=True)
    return 0
