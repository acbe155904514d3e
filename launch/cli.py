"""The `monolith` command: one entry point, one subcommand per role or launcher.

Subcommands live in their own modules and are imported only when used, so `monolith ps` never pays
for importing TensorFlow and a missing optional part fails with a clear message.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module exposing `add_arguments(parser)` and `main(args) -> int`, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "ps": ("ps.__main__", "run one parameter-server shard"),
    "run": ("launch.run_role", "start this process's role from MLP_*/TF_CONFIG"),
    "local": ("launch.local_cluster", "run a whole cluster as local processes"),
    "ray": ("launch.ray_cluster", "run the cluster as Ray actors"),
    "dispatcher": ("dispatcher.dispatcher_main", "run the tf.data service dispatcher"),
    "dsworker": ("dispatcher.dsworker_main", "run one tf.data service data worker"),
    "train": ("worker.train_main", "train a model in this process (local or against PS shards)"),
    "dump": ("worker.dump_main", "dump a model (runnable without its code), or show a dump"),
    # export and serving
    "export": ("worker.export_main", "export a checkpoint as SavedModels (standalone or distributed)"),
    "serve": ("serving.serve_main", "serve exported models over TF Serving's PredictionService"),
    "serve-ps": ("serving.serving_ps", "run one read-only serving PS shard of a distributed export"),
    "warmup": ("worker.export.warmup", "generate or decode TF Serving warmup files"),
    "saved-model-graph": ("worker.export.saved_model_graph", "write a SavedModel's graph for TensorBoard"),
}


def main(argv: list[str] | None = None) -> int:
    from launch.supervision import die_with_parent

    die_with_parent()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="monolith", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    wanted = argv[0] if argv and not argv[0].startswith("-") else None
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                parser.error(f"subcommand {name!r} is not available: {exc}")
            mod.add_arguments(p)
            p.set_defaults(_main=mod.main)
    args = parser.parse_args(argv)
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
