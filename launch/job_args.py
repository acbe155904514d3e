"""The job a launcher (`monolith local`, `monolith ray`) is asked to run: roles, model, training flags."""
from __future__ import annotations

import argparse
import logging
import tempfile

from services import transport_security
from worker.train_main import MAX_STEPS_HELP

log = logging.getLogger(__name__)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-ps", type=int, default=1, help="parameter-server shards (0 = local embeddings)")
    parser.add_argument("--num-workers", type=int, default=1, help="training workers")
    parser.add_argument("--model", required=True, help="model class as pkg.module:Class")
    parser.add_argument("--model-dir", default=None,
                        help="model/checkpoint directory (default: a temp dir; shared storage on a cluster)")
    parser.add_argument("--max-steps", type=int, default=None, help=MAX_STEPS_HELP)
    parser.add_argument("--dataservice", action="store_true", help="feed workers through a tf.data service")
    parser.add_argument("--num-dsworkers", type=int, default=2, help="data workers with --dataservice")
    parser.add_argument("--metrics", action="store_true",
                        help="PS shards and workers serve Prometheus metrics on free ports (URLs in their logs)")
    parser.add_argument("--restart-failed", type=int, default=0, metavar="K",
                        help="restart a PS, worker or data-service process that fails, up to K times per role, "
                             "instead of stopping the job (a PS shard restores the latest checkpoint)")
    transport_security.add_arguments(parser)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after `--`: extra `monolith train` arguments")


def model_dir_of(args: argparse.Namespace, prefix: str) -> str:
    if args.model_dir:
        return args.model_dir
    model_dir = tempfile.mkdtemp(prefix=prefix)
    log.info("model dir: %s", model_dir)
    return model_dir


def train_args_of(args: argparse.Namespace) -> list[str]:
    """`--max-steps` plus whatever followed `--`, for every worker's `monolith train`."""
    extra = list(args.train_args or [])
    extra = extra[1:] if extra[:1] == ["--"] else extra
    return (["--max-steps", str(args.max_steps)] if args.max_steps is not None else []) + extra


def role_counts(num_ps: int, num_workers: int, dataservice: bool, num_dsworkers: int) -> dict[str, int]:
    """How many processes of each role the job needs, validated."""
    if num_ps < 0 or num_workers < 1:
        raise ValueError(f"need num_ps >= 0 and num_workers >= 1, got num_ps={num_ps} num_workers={num_workers}")
    if dataservice and num_dsworkers < 1:
        raise ValueError(f"num_dsworkers={num_dsworkers}: the tf.data service needs at least one data worker")
    counts = {"ps": num_ps, "worker": num_workers}
    if dataservice:
        counts.update(dispatcher=1, dsworker=num_dsworkers)
    return {r: n for r, n in counts.items() if n}
