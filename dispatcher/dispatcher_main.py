"""`monolith dispatcher --port P`: the job's tf.data service dispatcher, until SIGTERM."""
from __future__ import annotations

import argparse
import logging

from services import role_logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, required=True, help="port to serve the dispatcher on")
    parser.add_argument("--work-dir", default=None, help="journal directory (fault-tolerant restarts)")


def main(args: argparse.Namespace) -> int:
    role_logging.configure("dispatcher", 0)
    from dispatcher.data_service import serve_until_signalled, start_dispatcher

    server = start_dispatcher(args.port, args.work_dir)
    log.info("dispatcher ready on port %d (target %s)", args.port, server.target)
    return serve_until_signalled(server, "dispatcher")
