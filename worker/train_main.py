"""`monolith train`: one worker process, local (in-process store) or against PS shards.

Worker 0 is the chief: it restores/saves the coordinated checkpoints, evaluates at the end with
`--eval`, and writes the run summary (AUC per head, examples/s, steps, table sizes) to `--summary-file`.
With several workers its final checkpoint, evaluation and summary wait until every worker has finished
training (a barrier on PS shard 0, docs/barriers.md), so all three are at the job's final global step.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time

from ps.persist.atomic_files import atomic_write_bytes
from services import role_logging, transport_security
from services.cluster_spec import LAUNCH_ID_VAR

log = logging.getLogger(__name__)

MAX_STEPS_HELP = ("the job's final global step: the workers together train until the global step (one counter for "
                  "the whole job, on PS shard 0) reaches it; not a per-worker count")
"""One wording for every command that takes --max-steps (local, ray, run, train)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="model class as pkg.module:Class")
    source.add_argument("--from-dump", metavar="DUMP_DIR",
                        help="a model dump (`monolith dump`): train it without importing the model's module")
    parser.add_argument("--ps", default=None, help="PS addresses host:port,host:port (absent: local mode)")
    parser.add_argument("--worker-index", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--model-dir", required=True, help="checkpoint directory (shared by the cluster)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help=MAX_STEPS_HELP + " (absent: no limit; training runs until the input ends or the process "
                             "is stopped, as with an unbounded Kafka input)")
    parser.add_argument("--eval", action="store_true", help="the chief evaluates after training")
    parser.add_argument("--dispatcher", default=None, help="tf.data service dispatcher, grpc://host:port")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics (0: any port), with the step-time breakdown (also written "
                             "to <model-dir>/train for TensorBoard)")
    parser.add_argument("--staleness", type=int, default=0, help="lookups may run this many steps ahead")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override the model's per-worker batch size (train, and eval unless --eval-batch-size)")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="override the model's eval batch size")
    parser.add_argument("--summary-file", default=None, help="where the chief writes the JSON run summary")
    parser.add_argument("--save-checkpoints-steps", type=int, default=None)
    parser.add_argument("--save-checkpoints-secs", type=float, default=None)
    parser.add_argument("--keep-checkpoint-max", type=int, default=5)
    parser.add_argument("--progress", action="store_true", help="show a live progress line")
    parser.add_argument("--export-base", default=None,
                        help="the chief exports a SavedModel after every checkpoint under this directory")
    parser.add_argument("--export-mode", choices=("standalone", "distributed"), default="standalone")
    parser.add_argument("--num-serving-shards", type=int, default=1, help="serving PS shards of a distributed export")
    parser.add_argument("--barrier-timeout", type=float, default=600.0,
                        help="seconds workers wait for each other at the end of training before failing")
    transport_security.add_arguments(parser)


def _import_model_module(name: str):
    """Import `name`; if its top package is not found, look in the current directory too, as `python -m`
    does (the `monolith` console script does not put it on sys.path)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        if exc.name != name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        log.info("%s is not installed: importing it from the current directory %s", name, cwd)
        return importlib.import_module(name)


def load_model_class(spec: str):
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ValueError(f"--model must look like pkg.module:Class, got {spec!r}")
    try:
        module = _import_model_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"--model {spec!r}: cannot import {module_name!r}: {exc} (the module must be importable "
                         f"by every process: installed, on PYTHONPATH, or in the current directory)") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"--model {spec!r}: {module_name} has no {class_name!r}")
    return cls


def _metric_hooks(model, port: int) -> list:
    from services.metrics import start_metrics_server
    from worker.modeling.hooks.step_loss import StepLossMetricHook
    from worker.modeling.hooks.throughput import ThroughputMetricHook

    bound = start_metrics_server(port)
    log.info("metrics on http://127.0.0.1:%d/metrics", bound)
    hooks: list = [StepLossMetricHook()]
    if model.p.metrics.enable_throughput_hook:
        hooks.append(ThroughputMetricHook(type(model).__name__, start_time_secs=time.time(), run_every_n_secs=5))
    return hooks


def _export_listener(args: argparse.Namespace):
    from worker.export.export_hooks import ExportSaverListener
    from worker.export_main import build_model, exporter_for

    model = build_model(args.model, args.from_dump)  # the exporter traces its own copy of the model
    exporter = exporter_for(model, args.model_dir, args.export_base, args.export_mode, args.num_serving_shards,
                            global_step_as_timestamp=True)
    return ExportSaverListener(args.model_dir, model.create_serving_input_receiver_fn(), exporter)


def build_summary(est, model, args, stats: dict, metrics: dict | None, checkpoint: str | None) -> dict:
    heads = {k[:-4]: v for k, v in (metrics or {}).items() if k.endswith("_auc")}
    mses = {k[:-4]: v for k, v in (metrics or {}).items() if k.endswith("_mse")}
    return {
        "model": args.model, "mode": "distributed" if args.ps else "local",
        "num_ps": len(args.ps.split(",")) if args.ps else 0, "num_workers": args.num_workers,
        "worker_index": args.worker_index, "batch_size": model.batch_size, "staleness": args.staleness,
        "global_step": stats.get("global_step"), "steps": stats.get("steps"), "examples": stats.get("examples"),
        "train_seconds": stats.get("seconds"), "worker_examples_per_sec": stats.get("examples_per_sec"),
        "examples_per_sec": stats.get("cluster_examples_per_sec", stats.get("examples_per_sec")),
        "loss": stats.get("loss"), "auc": heads, "mse": mses, "eval": metrics,
        "table_sizes": est.table_sizes(), "checkpoint": checkpoint,
        "steady_examples_per_sec": stats.get("steady_examples_per_sec"), "step_ms": stats.get("step_ms"),
    }


def _build_model(args: argparse.Namespace):
    if not args.from_dump:
        return load_model_class(args.model)()
    if args.batch_size is not None or args.eval_batch_size is not None:
        raise ValueError("--batch-size/--eval-batch-size cannot change a dumped model: its input functions were "
                         "dumped with their batch sizes")
    from worker.model_dump.replay import DumpedModel

    args.model = f"dump:{args.from_dump}"
    return DumpedModel(args.from_dump)


def main(args: argparse.Namespace) -> int:
    role_logging.configure("worker", args.worker_index)
    transport_security.from_args_exported(args)  # how this worker's PS clients connect
    from worker.runtime.estimator import Estimator
    from worker.runtime.run_config import RunConfig

    model = _build_model(args)
    if args.batch_size is not None:
        if args.batch_size <= 0:
            raise ValueError(f"--batch-size must be > 0, got {args.batch_size}")
        model.batch_size = args.batch_size  # sets the train and the eval batch size
    if args.eval_batch_size is not None:
        if args.eval_batch_size <= 0:
            raise ValueError(f"--eval-batch-size must be > 0, got {args.eval_batch_size}")
        model.p.eval.per_replica_batch_size = args.eval_batch_size
    config = RunConfig(
        model_dir=args.model_dir, ps_addresses=args.ps.split(",") if args.ps else None,
        worker_index=args.worker_index, num_workers=args.num_workers, staleness=args.staleness,
        save_checkpoints_steps=args.save_checkpoints_steps, save_checkpoints_secs=args.save_checkpoints_secs,
        keep_checkpoint_max=args.keep_checkpoint_max, dispatcher=args.dispatcher, progress=args.progress,
        launch_id=os.environ.get(LAUNCH_ID_VAR) or None, barrier_timeout_s=args.barrier_timeout,
        export_step_times=args.metrics_port is not None)
    hooks = _metric_hooks(model, args.metrics_port) if args.metrics_port is not None else []
    est = Estimator(model, config, hooks=hooks)
    if args.export_base and config.is_chief:
        est.checkpoint_listeners.append(_export_listener(args))
    try:
        est.train(0)  # builds, restores (chief) or waits for the chief
        start_step = est.backend.global_step()
        started = time.perf_counter()
        stats = est.train(args.max_steps)
        elapsed = time.perf_counter() - started
        if config.distributed and elapsed > 0 and stats.get("global_step") is not None:
            stats["cluster_examples_per_sec"] = (stats["global_step"] - start_step) * model.batch_size / elapsed
        log.info("trained: %s", {k: v for k, v in stats.items()})
        if not config.is_chief:
            return 0
        checkpoint = getattr(est, "last_checkpoint", None)
        if checkpoint is None and config.distributed:
            checkpoint = est.save(stats["global_step"])
        metrics = est.evaluate() if args.eval else None
        summary = build_summary(est, model, args, stats, metrics, checkpoint)
        log.info("summary: %s", json.dumps(summary))
        if args.summary_file:
            atomic_write_bytes(args.summary_file, json.dumps(summary, indent=2).encode())
        return 0
    finally:
        est.close()
