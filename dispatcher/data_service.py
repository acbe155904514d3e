"""The tf.data service pieces of a job: one dispatcher, several data workers, and the consumer side.

A dispatcher hands out splits of each worker's `input_fn` dataset; data workers (dsworkers) run the
input pipeline and stream elements to the training workers. In `distributed_epoch` mode every element
of the dataset is produced exactly once per epoch across all consumers of one job name, so training
workers sharing a job name partition the data between them instead of each reading all of it.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import uuid
from typing import NoReturn

import tensorflow as tf

log = logging.getLogger(__name__)


def start_dispatcher(port: int, work_dir: str | None = None) -> tf.data.experimental.service.DispatchServer:
    """Start a dispatcher on `port`; with `work_dir` its journal survives a restart (fault-tolerant mode)."""
    config = tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir)
    )
    return tf.data.experimental.service.DispatchServer(config)


def start_dsworker(
    dispatcher_address: str, port: int, worker_address: str
) -> tf.data.experimental.service.WorkerServer:
    """Start a data worker on `port` registered with `dispatcher_address` (`host:port`, no scheme).

    `worker_address` is the `host:port` consumers use to reach this worker, so it must be routable from
    the training workers (not `localhost` on a multi-host job).
    """
    dispatcher_address = dispatcher_address.removeprefix("grpc://")
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=dispatcher_address, worker_address=worker_address, port=port
    )
    return tf.data.experimental.service.WorkerServer(config)


def unique_job_name(prefix: str = "monolith") -> str:
    """A fresh job name: a reused name joins the finished job and yields nothing (docs/monolith-reference.md)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def distribute(dataset: tf.data.Dataset, service: str, job_name: str,
               processing_mode: str = "distributed_epoch") -> tf.data.Dataset:
    """Read `dataset` through the tf.data service at `service` (`grpc://host:port`).

    Every consumer that passes the same `job_name` shares one job: the examples are split between them.
    """
    if not service.startswith("grpc://"):
        raise ValueError(f"service={service!r} must be a grpc://host:port dispatcher target")
    return dataset.apply(
        tf.data.experimental.service.distribute(processing_mode=processing_mode, service=service, job_name=job_name)
    )


def serve_until_signalled(server, what: str) -> NoReturn:
    """Block until SIGTERM/SIGINT, then end the process with status 0.

    The server is not `stop()`ped: a data worker's `stop()` blocks, holding the GIL, for as long as it
    keeps retrying a dispatcher that is gone — which is how every job ends, with all roles stopping
    together. Neither server keeps state that a clean stop would save (the dispatcher's journal, when it
    has a work dir, is written as it goes), so the process simply exits.
    """
    stop = threading.Event()
    received: list[int] = []

    def handler(signum, _frame) -> None:
        received.append(signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    while not stop.wait(1.0):
        pass
    log.info("%s (%s) exiting on %s", what, type(server).__name__, signal.Signals(received[0]).name)
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)
