"""How deep-insight records are parsed, routed to directories and laid out as lines.

Record fields (see `worker.modeling.deep_insight`): `model_name`, `req_time`, `uid`, `predict` and `label`
({target: value}); the upper-case `__REQ_TIME__`/`__UID__`/`__FEED_ID__` spellings of other producers
are honoured first, as in the original.
"""
from __future__ import annotations

import datetime
import json
import os


def default_parse_fn(item):
    """JSON-decode str/bytes messages; pass anything else through."""
    if isinstance(item, bytes | bytearray):
        item = item.decode("utf-8")
    return json.loads(item) if isinstance(item, str) else item


def default_layout_fn(obj) -> str:
    """Strings as they are, anything else as JSON (its repr if not JSON-serialisable)."""
    if isinstance(obj, str):
        return obj
    try:
        return json.dumps(obj)
    except (TypeError, ValueError):
        return repr(obj)


def _first(obj, keys, default):
    for key in keys:
        value = obj.get(key)
        if value is not None and value != "":
            return value
    return default


def _req_time(obj):
    value = _first(obj, ("__REQ_TIME__", "req_time"), None)
    if value is None:
        raise KeyError(f"record has no req_time (or __REQ_TIME__): {str(obj)[:200]}")
    return value


def req_date(req_time) -> str:
    """`YYYYMMDD` for a record's req_time: a date string is kept; a number is unix seconds (ms if > 1e11), UTC."""
    if isinstance(req_time, str):
        if len(req_time) == 8 and req_time.isdigit():
            return req_time
        raise ValueError(f"req_time {req_time!r} is neither YYYYMMDD nor a unix time")
    seconds = float(req_time)
    if seconds > 1e11:
        seconds /= 1000.0
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y%m%d")


def vepfs_key_fn(obj, worker_id: int, base_name: str) -> str:
    """`base_name/<model_name>/<YYYYMMDD>/worker_<id>`: one directory per model, day and worker."""
    model_name = obj.get("model_name") or "model_name"
    return os.path.join(base_name, model_name, req_date(_req_time(obj)), f"worker_{worker_id}")


def vepfs_layout_fn(obj) -> str:
    """`req_time;gid;uid;<predict JSON>;<label JSON>` (literal `gid`/`uid` when the record lacks them)."""
    req_time = _req_time(obj)
    gid = _first(obj, ("__FEED_ID__", "feedid", "gid"), "gid")
    uid = _first(obj, ("__UID__", "userid", "uid"), "uid")
    return f"{req_time};{gid};{uid};{json.dumps(obj.get('predict'))};{json.dumps(obj.get('label'))}"
