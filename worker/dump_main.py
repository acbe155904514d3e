"""`monolith dump --model pkg.mod:Model --out D` makes a dump; `monolith dump --show D` prints one."""
from __future__ import annotations

import argparse
import logging

from services import role_logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="model class as pkg.module:Class (built with no arguments)")
    what.add_argument("--show", metavar="DUMP_DIR", help="print a readable summary of a dump directory")
    parser.add_argument("--out", help="the dump directory to write (replaced whole if it exists)")


def main(args: argparse.Namespace) -> int:
    role_logging.configure("dump", 0)
    if args.show:
        from worker.model_dump import dump_file, summary

        print(summary.render(dump_file.read(args.show)))
        return 0
    if not args.out:
        raise SystemExit("monolith dump --model needs --out DUMP_DIR")
    from worker.model_dump.builder import dump_model
    from worker.train_main import load_model_class

    dump = dump_model(load_model_class(args.model)(), args.out, model_class=args.model)
    print(f"dumped {args.model} to {args.out}: {len(dump.tables)} tables, {len(dump.features)} features, "
          f"{len(dump.dense_variables)} dense variables")
    return 0
