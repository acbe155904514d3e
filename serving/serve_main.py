"""`monolith serve`: a TF-Serving-compatible PredictionService over the newest model version under a base.

Standalone exports are served from `--export-base` directly; with `--ps-addresses` (the serving PS
shards, in shard order) the entry sub-model `<export-base>/entry/<version>` is served and its embedding
lookups go to those shards. Logs `ready: serving model NAME version V on HOST:PORT` once a version is
loaded and the port is bound; Prometheus metrics (requests, latency and errors by status code, the
loaded version) are served on `--metrics-port`. Stops cleanly on SIGTERM/SIGINT (in-flight calls finish).
With `--dense-sync` the entry also takes the dense values the training PS shards push
(`EntrySync/SyncDense`, serving/dense_sync_receiver.py).
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from ps.config import ServerConfig
from services import role_logging, transport_security
from services.export_layout import ENTRY
from services.signals import stop_on_signals
from serving.config import ServeConfig

log = logging.getLogger("serving.server")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig(export_base=".")
    parser.add_argument("--export-base", required=True, help="directory whose integer-named subdirectories are "
                        "versions (or holds entry/ and ps_<i>/ of a distributed export)")
    parser.add_argument("--port", type=int, required=True, help="gRPC port (0 = any free port, logged)")
    parser.add_argument("--host", default=d.server.host)
    parser.add_argument("--metrics-port", type=int, default=d.server.metrics_port,
                        help="Prometheus port (0 = any free port, logged; -1 = off)")
    parser.add_argument("--model-name", default=d.model_name, help="the model name requests must use")
    parser.add_argument("--ps-addresses", default=None, help="serving PS shards host:port,... (distributed export)")
    parser.add_argument("--keep-versions", type=int, default=d.keep_versions, help="versions kept loaded")
    parser.add_argument("--poll-s", type=float, default=d.poll_s, help="how often the export base is checked")
    parser.add_argument("--wait-for-model-s", type=float, default=d.wait_for_model_s,
                        help="how long to wait for a first version")
    parser.add_argument("--threads", type=int, default=d.server.threads, help="RPC handler threads")
    parser.add_argument("--max-request-mb", type=int, default=d.server.max_message_bytes >> 20,
                        help="larger requests get RESOURCE_EXHAUSTED")
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                        help="requests with more input rows get INVALID_ARGUMENT")
    parser.add_argument("--merge-requests", action="store_true",
                        help="requests that queue while --concurrent-batches model calls run go out as one batch "
                        "(only for models whose rows are independent)")
    parser.add_argument("--concurrent-batches", type=int, default=d.concurrent_batches,
                        help="with --merge-requests: model calls (each a batch of merged requests) run at once")
    parser.add_argument("--ps-timeout-s", type=float, default=d.ps_timeout_s, help="deadline of one serving PS lookup")
    parser.add_argument("--grace-s", type=float, default=d.server.grace_s)
    parser.add_argument("--dense-sync", action="store_true",
                        help="take the dense variables' values from the training PS shards (their "
                             "--dense-sync-interval-s; docs/online-sync.md)")
    transport_security.add_arguments(parser)


def config_of(args: argparse.Namespace) -> ServeConfig:
    server = ServerConfig(port=args.port, host=args.host, metrics_port=args.metrics_port, threads=args.threads,
                          max_message_bytes=args.max_request_mb << 20, grace_s=args.grace_s)
    return ServeConfig(export_base=args.export_base, model_name=args.model_name,
                       ps_addresses=tuple(args.ps_addresses.split(",")) if args.ps_addresses else (),
                       keep_versions=args.keep_versions, poll_s=args.poll_s, wait_for_model_s=args.wait_for_model_s,
                       max_batch_size=args.max_batch_size, merge_requests=args.merge_requests,
                       concurrent_batches=args.concurrent_batches, ps_timeout_s=args.ps_timeout_s,
                       dense_sync=args.dense_sync, server=server)


def main(args: argparse.Namespace) -> int:
    role_logging.configure("serve", 0)
    try:
        config = config_of(args)
        security = transport_security.from_args_exported(args)  # exported: the serving PS client uses it too
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    return run(config, security)


def _serving_ps(config: ServeConfig):
    """A client of the serving PS shards, once every one answers (None for a standalone export)."""
    if not config.ps_addresses:
        return None
    from ps.client.client import PSClient

    # a lookup that fails fast: the caller gets UNAVAILABLE naming the shard instead of waiting on retries
    client = PSClient(config.ps_addresses, timeout_s=config.ps_timeout_s, retries=1, backoff_s=0.05)
    client.wait_until_ready(config.wait_for_model_s)
    return client


def run(config: ServeConfig, security: transport_security.TransportSecurity | None = None) -> int:
    """Serve until SIGTERM/SIGINT; the process exit code. `security` (default: from the environment) is
    the TLS/token setting of the gRPC port, the metrics port and the client of the serving PS shards."""
    security = transport_security.TransportSecurity.from_environ() if security is None else security
    from ps.errors import PSError
    from ps.service.server import serve
    from services import exit_hook
    from services.metrics import start_metrics_server
    from serving import metrics
    from serving.model_versions import ModelVersions
    from serving.prediction_service import PredictionServer
    from serving.servable import Servable
    from serving.warmup_replay import replay

    stop = stop_on_signals(log)
    exit_hook.install("serve", 0)
    try:
        ps_client = _serving_ps(config)
    except PSError as exc:
        log.error("serving PS shards not ready: %s", exc)
        return 1
    base = Path(config.export_base) / ENTRY if ps_client is not None else Path(config.export_base)
    receiver = None

    def load(version: int, path: Path) -> Servable:
        servable = Servable(config.model_name, version, path, ps_client, max_batch_size=config.max_batch_size,
                            merge_requests=config.merge_requests, concurrent_batches=config.concurrent_batches)
        return receiver.prime(servable) if receiver is not None else servable

    versions = ModelVersions(config.model_name, base, load, replay, keep=config.keep_versions)
    if config.dense_sync:
        from serving.dense_sync_receiver import DenseSyncReceiver

        receiver = DenseSyncReceiver(versions)
    try:
        deadline = time.monotonic() + config.wait_for_model_s
        while not versions.refresh():
            if stop.is_set() or time.monotonic() > deadline:
                log.error("no loadable version under %s after %.0fs (failed: %s)", base, config.wait_for_model_s,
                          {v: f.message for v, f in versions.failed.items()})
                return 1
            time.sleep(min(config.poll_s, 0.5))
        versions.start(config.poll_s)
        metrics.register_versions(versions)
        server = config.server
        metrics_note = "off"
        if server.metrics_port >= 0:
            bound = start_metrics_server(server.metrics_port, addr=server.host, security=security)
            metrics_note = f"{server.host}:{bound}"

        def ready(port: int) -> None:
            log.info("ready: serving model %s version %d on %s:%d (metrics=%s)", config.model_name,
                     versions.loaded_versions[-1], server.host, port, metrics_note)

        prediction = PredictionServer(versions)
        handlers = prediction.handlers() + (receiver.handlers(prediction) if receiver is not None else [])
        serve(handlers, server, stop=stop, on_ready=ready, security=security, name="serve")
    except OSError as exc:
        log.error("%s", exc)
        return 1
    finally:
        versions.stop()
        if ps_client is not None:
            ps_client.close()
    log.info("stopped")
    return 0
