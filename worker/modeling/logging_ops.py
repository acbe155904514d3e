"""Timing, timer metrics and process-health checks usable inside `tf.function`.

TensorFlow ops around plain Python (`tf.py_function`): the original's custom kernels are not available,
and these run a few times per step, where a Python call costs nothing next to the step itself.
"""
from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Mapping

import tensorflow as tf

from protos import monitoring_pb2
from services.metrics import format_tags, get_cli, parse_tags

MEM_LIMIT_ENV = "MONOLITH_MACHINE_INFO_MEM_LIMIT"
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def tensors_timestamp(tensors):
    """Return `(tensors, ts)`: `ts` is a monotonic int64 nanosecond clock read after `tensors` exist."""
    flat = [t for t in tf.nest.flatten(tensors) if isinstance(t, tf.Tensor | tf.Variable)]
    with tf.control_dependencies(flat):
        ts = tf.py_function(time.monotonic_ns, [], Tout=tf.int64)
        passed = tf.nest.map_structure(lambda t: tf.identity(t) if isinstance(t, tf.Tensor) else t, tensors)
    ts.set_shape([])
    return passed, ts


def emit_timer(key: str, value, tags: Mapping[str, object] | None = None):
    """Observe `value` (seconds) into timer `key` with `tags`, as an op; passed as a `k=v|k2=v2` string."""
    tag_string = format_tags(tags)
    parse_tags(tag_string)

    def emit(v):
        get_cli().emit_timer(key, float(v.numpy()), tag_string)
        return True

    return tf.py_function(emit, [tf.cast(value, tf.float64)], Tout=tf.bool)


def default_mem_limit() -> int:
    """`$MONOLITH_MACHINE_INFO_MEM_LIMIT` (bytes), else the cgroup memory limit, else physical memory."""
    env = os.environ.get(MEM_LIMIT_ENV)
    if env:
        try:
            return int(env)
        except ValueError:
            raise ValueError(f"${MEM_LIMIT_ENV} must be an integer number of bytes, got {env!r}") from None
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit():
            return min(int(text), physical)
    return physical


def process_rss_bytes() -> int:
    """Resident memory of this process now (Linux `/proc`), else its peak (`getrusage`)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def machine_info(mem_limit: int | None = None):
    """A scalar string tensor: the serialized `MachineInfo` (limit, host, pid) health is checked against."""
    limit = default_mem_limit() if mem_limit is None else int(mem_limit)
    if limit < 0:
        raise ValueError(f"mem_limit must be >= 0 bytes, got {mem_limit!r}")
    info = monitoring_pb2.MachineInfo(mem_limit_bytes=limit, hostname=socket.gethostname(), pid=os.getpid())
    return tf.constant(info.SerializeToString(), dtype=tf.string)


def machine_health(info_bytes: bytes) -> bytes:
    """b"" when this process's RSS is within the limit, else a serialized `MachineHealthResult`."""
    info = monitoring_pb2.MachineInfo.FromString(info_bytes)
    rss = process_rss_bytes()
    if rss <= info.mem_limit_bytes:
        return b""
    return monitoring_pb2.MachineHealthResult(
        status=monitoring_pb2.MachineHealthResult.OUT_OF_MEMORY,
        message=f"process {os.getpid()} uses {rss} bytes, more than the {info.mem_limit_bytes}-byte limit",
        mem_usage_bytes=rss, mem_limit_bytes=info.mem_limit_bytes, hostname=info.hostname, pid=os.getpid(),
    ).SerializeToString()


def check_machine_health(machine_info_tensor):
    """A scalar string tensor: empty when healthy, a serialized `MachineHealthResult` otherwise."""
    out = tf.py_function(lambda b: machine_health(b.numpy()), [machine_info_tensor], Tout=tf.string)
    out.set_shape([])
    return out
