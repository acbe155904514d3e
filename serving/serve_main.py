"""`monolith serve`: a TF-Serving-compatible PredictionService over the newest model version under a base.

Standalone exports are served from `--export-base` directly; with `--ps-addresses` (the serving PS
shards, in shard order) the entry sub-model `<export-base>/entry/<version>` is served and its embedding
lookups go to those shards. Logs `ready: serving model NAME version V on HOST:PORT` once a version is
loaded and the port is bound; stops cleanly on SIGTERM/SIGINT (in-flight calls finish).
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path

from services import role_logging

log = logging.getLogger("serving.server")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export-base", required=True, help="directory whose integer-named subdirectories are "
                        "versions (or holds entry/ and ps_<i>/ of a distributed export)")
    parser.add_argument("--port", type=int, required=True, help="gRPC port (0 = any free port, logged)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model-name", default="default", help="the model name requests must use")
    parser.add_argument("--ps-addresses", default=None, help="serving PS shards host:port,... (distributed export)")
    parser.add_argument("--keep-versions", type=int, default=2, help="versions kept loaded")
    parser.add_argument("--poll-s", type=float, default=1.0, help="how often the export base is checked")
    parser.add_argument("--wait-for-model-s", type=float, default=300.0, help="how long to wait for a first version")
    parser.add_argument("--threads", type=int, default=16, help="RPC handler threads")
    parser.add_argument("--max-request-mb", type=int, default=64,
                        help="larger requests get RESOURCE_EXHAUSTED")
    parser.add_argument("--ps-timeout-s", type=float, default=5.0, help="deadline of one serving PS lookup")
    parser.add_argument("--grace-s", type=float, default=5.0)


def main(args: argparse.Namespace) -> int:
    role_logging.configure("serve", 0)
    from ps.server import serve
    from serving.model_versions import ModelVersions
    from serving.prediction_service import PredictionServer
    from serving.servable import Servable
    from serving.warmup_replay import replay

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: (log.info("signal %d: shutting down", signum), stop.set()))
    ps_client = None
    base = Path(args.export_base)
    if args.ps_addresses:
        from services.ps_client import PSClient

        ps_client = PSClient(args.ps_addresses.split(","), timeout_s=args.ps_timeout_s, retries=1, backoff_s=0.05)
        try:
            ps_client.wait_until_ready(args.wait_for_model_s)
        except Exception as exc:
            log.error("serving PS shards not ready: %s", exc)
            return 1
        base = base / "entry"
    versions = ModelVersions(args.model_name, base, lambda v, path: Servable(args.model_name, v, path, ps_client),
                             replay, keep=args.keep_versions)
    deadline = time.monotonic() + args.wait_for_model_s
    while not versions.refresh():
        if stop.is_set() or time.monotonic() > deadline:
            log.error("no loadable version under %s after %.0fs (failed: %s)", base, args.wait_for_model_s,
                      {v: f.message for v, f in versions.failed.items()})
            return 1
        time.sleep(min(args.poll_s, 0.5))
    versions.start(args.poll_s)
    server = PredictionServer(versions)

    def ready(port: int) -> None:
        log.info("ready: serving model %s version %d on %s:%d", args.model_name, versions.loaded_versions[-1],
                 args.host, port)

    try:
        serve(server.handlers(), f"{args.host}:{args.port}", threads=args.threads,
              max_message_bytes=args.max_request_mb * 1024 * 1024, stop=stop, on_ready=ready, grace_s=args.grace_s)
    except OSError as exc:
        log.error("%s", exc)
        return 1
    finally:
        versions.stop()
        if ps_client is not None:
            ps_client.close()
    log.info("stopped")
    return 0
