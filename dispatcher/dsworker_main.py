"""`monolith dsworker --dispatcher host:port --port P`: one tf.data service data worker, until SIGTERM."""
from __future__ import annotations

import argparse
import logging

from services import role_logging
from services.mlp_env import check_port, format_addr, split_addr

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dispatcher", required=True, help="dispatcher host:port (grpc:// prefix allowed)")
    parser.add_argument("--port", type=int, required=True, help="port to serve this data worker on")
    parser.add_argument("--host", default="127.0.0.1", help="host the training workers reach this data worker at")
    parser.add_argument("--index", default="0", help="index or label of this data worker (for logs)")
    parser.add_argument("--wait-timeout", type=float, default=120.0, help="seconds to wait for the dispatcher")


def main(args: argparse.Namespace) -> int:
    role_logging.configure("dsworker", args.index)
    dispatcher = args.dispatcher.removeprefix("grpc://")
    host, port = split_addr(dispatcher, "--dispatcher")
    if not check_port(host, port, timeout=args.wait_timeout):
        log.error("dispatcher %s did not come up within %.0fs", dispatcher, args.wait_timeout)
        return 1
    from dispatcher.data_service import serve_until_signalled, start_dsworker

    worker_address = format_addr(args.host, args.port)
    server = start_dsworker(dispatcher, args.port, worker_address)
    log.info("dsworker ready on %s (dispatcher %s)", worker_address, dispatcher)
    return serve_until_signalled(server, "dsworker")
