"""Deep insight: per-example (uid, prediction, label) records for offline model-quality analysis.

The original's deep-insight op is closed source; this module defines the message. For every example kept
by the sampler, one UTF-8 JSON object:

    {"model_name": str, "uid": int, "req_time": int (unix s, as fed), "train_time": int (unix s; 0 in tests),
     "targets": [str, ...], "predict": {target: float}, "label": {target: float},
     "sample_rate": {target: float}, "sample_ratio": float, "container": hostname,
     "extra_float": {key: float}, "extra_int": {key: int}, "extra_str": {key: str}}

`predict`/`label` are what `worker.modeling.hooks.vepfs.vepfs_layout_fn` lays out. Sampling is by uid only:
`splitmix64(uid) / 2**64 < sample_ratio`, so the same users are kept in every step, on every worker and
for every model. Messages are returned (one per example, b"" where not kept) when they have somewhere
to go — Kafka or a dump file (`is_fake` in the original) — and otherwise only counted.
"""
from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from services.metrics import get_cli

log = logging.getLogger(__name__)

DEFAULT_TARGET = "ctr_head"

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def uid_hash(uids) -> np.ndarray:
    """splitmix64 of each uid (int64 reinterpreted as uint64): a well-mixed, platform-independent hash."""
    z = np.asarray(uids, dtype=np.int64).reshape(-1).view(np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def hit_sample_ratio(uids, sample_ratio: float) -> np.ndarray:
    """Boolean mask of the uids kept at `sample_ratio` (deterministic: same uid, same answer)."""
    if not 0.0 <= sample_ratio <= 1.0:
        raise ValueError(f"sample_ratio must be in [0, 1], got {sample_ratio!r}")
    top53 = (uid_hash(uids) >> np.uint64(11)).astype(np.float64)
    return top53 < sample_ratio * float(1 << 53)


def _vector(name: str, value, batch: int | None = None) -> np.ndarray:
    if value is None:
        raise KeyError(f"deep insight needs {name!r}")
    arr = np.asarray(value)
    arr = arr.reshape(-1)
    if batch is not None and arr.shape[0] != batch:
        raise ValueError(f"deep insight {name!r} has {arr.shape[0]} values, expected {batch} (one per example)")
    return arr


def _finite(name: str, arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"deep insight {name!r} contains NaN/Inf at example {int(np.argmin(np.isfinite(arr)))}")
    return arr


def _feature(features: Mapping, key: str) -> np.ndarray:
    if key not in features:
        raise KeyError(f"deep insight needs feature {key!r}; features have {sorted(features)}")
    return features[key]


def _extra_kind(arr: np.ndarray) -> str:
    if arr.dtype.kind == "f":
        return "extra_float"
    if arr.dtype.kind in "iub":
        return "extra_int"
    return "extra_str"


def _py(value):
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", "replace")
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


class DeepInsightClient:
    """Builds and counts messages for one process; returns them if `is_fake` (they go to Kafka or files
    through the hooks) and appends them to the TFRecord file `dump_filename` if set."""

    def __init__(self, enable_metrics_counter: bool = True, is_fake: bool = False, dump_filename: str | None = None,
                 container: str | None = None) -> None:
        self.enable_metrics_counter, self.is_fake, self.dump_filename = enable_metrics_counter, is_fake, dump_filename
        self.container = container or socket.gethostname()
        self._writer: Any = None
        self._lock = threading.Lock()

    def write(self, *, uids, req_times, labels, preds, sample_rates, model_name: str, targets: Sequence[str],
              sample_ratio: float, extra: Mapping[str, np.ndarray] | None = None,
              use_zero_train_time: bool = False) -> np.ndarray:
        """`labels`/`preds`/`sample_rates` are [num_targets, batch]; returns a [batch] object array of bytes."""
        batch = uids.shape[0]
        keep = hit_sample_ratio(uids, sample_ratio)
        out = np.full(batch, b"", dtype=object)
        if self.enable_metrics_counter:
            cli = get_cli()
            cli.emit_counter("deep_insight.examples", batch, {"model_name": model_name})
            cli.emit_counter("deep_insight.sampled", int(keep.sum()), {"model_name": model_name})
        if not self.is_fake and not self.dump_filename:
            return out
        train_time = 0 if use_zero_train_time else int(time.time())
        extra = extra or {}
        kinds = {key: _extra_kind(arr) for key, arr in extra.items()}
        for i in np.flatnonzero(keep):
            msg: dict[str, Any] = {
                "model_name": model_name, "uid": int(uids[i]), "req_time": int(req_times[i]), "train_time": train_time,
                "targets": list(targets),
                "predict": {t: float(preds[j, i]) for j, t in enumerate(targets)},
                "label": {t: float(labels[j, i]) for j, t in enumerate(targets)},
                "sample_rate": {t: float(sample_rates[j, i]) for j, t in enumerate(targets)},
                "sample_ratio": float(sample_ratio), "container": self.container,
                "extra_float": {}, "extra_int": {}, "extra_str": {},
            }
            for key, arr in extra.items():
                msg[kinds[key]][key] = _py(arr[i])
            out[i] = json.dumps(msg, separators=(",", ":")).encode("utf-8")
        if self.dump_filename:
            self._dump([m for m in out if m])
        return out if self.is_fake else np.full(batch, b"", dtype=object)

    def _dump(self, msgs: list[bytes]) -> None:
        with self._lock:
            if self._writer is None:
                import tensorflow as tf

                self._writer = tf.io.TFRecordWriter(self.dump_filename)
            for msg in msgs:
                self._writer.write(msg)
            self._writer.flush()

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


_clients: dict[tuple, DeepInsightClient] = {}
_clients_lock = threading.Lock()


def deep_insight_client(enable_metrics_counter: bool = True, is_fake: bool = False,
                        dump_filename: str | None = None, container: str | None = None) -> DeepInsightClient:
    """One client per (settings, dump file) in this process, as the original keeps one per machine."""
    key = (bool(enable_metrics_counter), bool(is_fake), dump_filename or None, container)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = DeepInsightClient(enable_metrics_counter, is_fake, dump_filename or None, container)
        return _clients[key]


def write_deep_insight(features: Mapping, sample_ratio: float, model_name: str, labels=None, preds=None,
                       target: str | None = None, targets: Sequence[str] | None = None, labels_list=None,
                       preds_list=None, sample_rates_list=None, extra_fields_keys: Sequence[str] = (),
                       enable_deep_insight_metrics: bool = True, enable_kafka_metrics: bool = False,
                       dump_filename: str | None = None, use_zero_train_time: bool = False) -> np.ndarray:
    """Deep-insight messages for one batch (numpy or eager tensors in; [batch] bytes out).

    Needs features `req_time` (absent → disabled, returns an empty array), `uid` and `sample_rate`.
    Single target: `labels`, `preds` (one per example) under `target` (default "ctr_head"). Several
    targets (`targets` given): `labels_list`/`preds_list` (one vector per target, None entries skipped),
    `sample_rates_list` (default: `sample_rate` for every target), and `extra_fields_keys` features copied
    into the message (`uid` is always among them, without changing the caller's list).
    """
    if "req_time" not in features:
        log.info("Disabling deep_insight because req_time is absent")
        return np.empty(0, dtype=object)
    is_fake = enable_kafka_metrics or bool(dump_filename)
    client = deep_insight_client(enable_deep_insight_metrics, is_fake, dump_filename)
    req_times = _vector("req_time", features["req_time"]).astype(np.int64)
    batch = req_times.shape[0]
    common: dict[str, Any] = {"req_times": req_times, "model_name": model_name, "sample_ratio": sample_ratio,
              "use_zero_train_time": use_zero_train_time}
    if not targets:
        uids = _vector("uid", _feature(features, "uid"), batch).astype(np.int64)
        rates = _finite("sample_rate", _vector("sample_rate", _feature(features, "sample_rate"), batch))
        return client.write(
            uids=uids, labels=_finite("labels", _vector("labels", labels, batch))[None],
            preds=_finite("preds", _vector("preds", preds, batch))[None], sample_rates=rates[None],
            targets=[target or DEFAULT_TARGET], **common)
    targets = list(targets)
    label_rows = [_vector("labels_list", x, batch) for x in (labels_list or []) if x is not None]
    pred_rows = [_vector("preds_list", x, batch) for x in (preds_list or []) if x is not None]
    if sample_rates_list is None or (isinstance(sample_rates_list, list | tuple) and not sample_rates_list):
        rate_rows = [_vector("sample_rate", _feature(features, "sample_rate"), batch)] * len(targets)
    elif isinstance(sample_rates_list, list | tuple):
        rate_rows = [_vector("sample_rates_list", x, batch) for x in sample_rates_list if x is not None]
    else:
        raise TypeError(f"sample_rates_list must be a list or tuple, got {type(sample_rates_list).__name__}")
    for name, rows in (("labels_list", label_rows), ("preds_list", pred_rows), ("sample_rates_list", rate_rows)):
        if len(rows) != len(targets):
            raise ValueError(f"deep insight {name} has {len(rows)} vectors for {len(targets)} targets {targets}")
    keys = list(extra_fields_keys)
    if "uid" not in keys:
        keys.append("uid")
    extra = {key: _vector(key, _feature(features, key), batch) for key in keys}
    return client.write(
        uids=extra["uid"].astype(np.int64), labels=_finite("labels_list", np.stack(label_rows)),
        preds=_finite("preds_list", np.stack(pred_rows)),
        sample_rates=_finite("sample_rates_list", np.stack(rate_rows)), targets=targets, extra=extra, **common)


def write_deep_insight_tf(features: Mapping, sample_ratio: float, model_name: str, **kwargs):
    """`write_deep_insight` for use inside `tf.function`: tensors in, a [batch] `tf.string` tensor out."""
    import tensorflow as tf

    tensor_args = {k: kwargs.pop(k) for k in ("labels", "preds", "labels_list", "preds_list", "sample_rates_list")
                   if kwargs.get(k) is not None}
    needed = {"req_time", "uid", "sample_rate", *kwargs.get("extra_fields_keys", ())}
    structure = {"features": {k: v for k, v in features.items() if k in needed}, **tensor_args}
    flat = tf.nest.flatten(structure)

    def run(*values):
        packed = tf.nest.pack_sequence_as(structure, [v.numpy() for v in values])
        out = write_deep_insight(packed.pop("features"), sample_ratio, model_name, **packed, **kwargs)
        return tf.constant(list(out), dtype=tf.string) if len(out) else tf.constant([], dtype=tf.string)

    out = tf.py_function(run, flat, Tout=tf.string)
    out.set_shape([None])
    return out
