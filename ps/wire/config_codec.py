"""Table config dicts (the store's `from_dict` input) to and from the `TableConfig` proto, losslessly.

The dict is the user contract; the proto is only the wire. Scalars keep their JSON type (an int
stays an int, so the store's type checks see exactly what the user wrote); nested values the proto
does not model travel as JSON.
"""
from __future__ import annotations

import json
from typing import Any

from protos import ps_pb2

_TOP_FIELDS = ("dim", "occurrence_threshold", "expire_time_days")


def _params_to_proto(values: dict[str, Any], out: ps_pb2.Params, where: str) -> None:
    for key, value in values.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: keys must be strings, got {key!r}")
        if isinstance(value, bool):
            out.flags[key] = value
        elif isinstance(value, int):
            out.ints[key] = value
        elif isinstance(value, float):
            out.floats[key] = value
        elif isinstance(value, str):
            out.strings[key] = value
        else:
            try:
                out.json[key] = json.dumps(value)
            except TypeError as exc:
                raise TypeError(f"{where}.{key}: value {value!r} is not JSON-serializable") from exc


def _params_from_proto(p: ps_pb2.Params) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out.update(p.floats)
    out.update(p.ints)
    out.update(p.flags)
    out.update(p.strings)
    out.update({k: json.loads(v) for k, v in p.json.items()})
    return out


def _typed_to_proto(value: Any, out, where: str) -> None:
    """Initializer / Optimizer dict -> message with `type` + params."""
    if not isinstance(value, dict):
        raise TypeError(f"{where} must be a dict with a 'type', got {value!r}")
    rest = dict(value)
    kind = rest.pop("type", None)
    if not isinstance(kind, str):
        raise ValueError(f"{where}.type must be a string, got {kind!r}")
    out.type = kind
    _params_to_proto(rest, out.params, where)


def _typed_from_proto(msg) -> dict[str, Any]:
    return {"type": msg.type, **_params_from_proto(msg.params)}


def _segment_to_proto(seg: Any, out: ps_pb2.Segment, where: str) -> None:
    if not isinstance(seg, dict):
        raise TypeError(f"{where} must be a dict, got {seg!r}")
    rest = dict(seg)
    rest.setdefault("dim", None)
    _dim_init_opt_to_proto(rest, out, where, f"{where}.dim")
    _params_to_proto(rest, out.extra, where)


def _pop_number(rest: dict, key: str, field: str, kinds: type | tuple[type, ...], noun: str):
    """rest.pop(key), refused unless it is one of `kinds` (never a bool): "<field> must be <noun>, got ..."."""
    value = rest.pop(key)
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise ValueError(f"{field} must be {noun}, got {value!r}")
    return value


def _dim_init_opt_to_proto(rest: dict, out, where: str, dim_field: str) -> None:
    """Move `dim`, `initializer` and `optimizer` (those present) from `rest` into `out` (a segment or table)."""
    if "dim" in rest:
        out.dim = _pop_number(rest, "dim", dim_field, int, "an int")
    if "initializer" in rest:
        _typed_to_proto(rest.pop("initializer"), out.initializer, f"{where}.initializer")
    if "optimizer" in rest:
        _typed_to_proto(rest.pop("optimizer"), out.optimizer, f"{where}.optimizer")


def table_config_to_proto(name: str, config: dict[str, Any]) -> ps_pb2.TableConfig:
    """Encode one table's dict config; raises ValueError/TypeError naming the bad field."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"table name must be a non-empty string, got {name!r}")
    where = f"table {name!r}"
    if not isinstance(config, dict):
        raise TypeError(f"{where}: config must be a dict, got {type(config).__name__}")
    msg = ps_pb2.TableConfig(name=name)
    rest = dict(config)
    segments = rest.pop("segments", None)
    if segments is not None:
        if not isinstance(segments, list | tuple) or not segments:
            raise ValueError(f"{where}: segments must be a non-empty list, got {segments!r}")
        for i, seg in enumerate(segments):
            _segment_to_proto(seg, msg.segments.add(), f"{where}.segments[{i}]")
    _dim_init_opt_to_proto(rest, msg, where, f"{where}: dim")
    if "occurrence_threshold" in rest:
        msg.occurrence_threshold = _pop_number(rest, "occurrence_threshold", f"{where}: occurrence_threshold", int,
                                               "an int")
    if "expire_time_days" in rest:
        msg.expire_time_days = float(_pop_number(rest, "expire_time_days", f"{where}: expire_time_days",
                                                 (int, float), "a number"))
    _params_to_proto(rest, msg.extra, where)
    return msg


def table_config_from_proto(msg: ps_pb2.TableConfig) -> dict[str, Any]:
    """Decode to exactly the dict that was encoded."""
    config: dict[str, Any] = {}
    if msg.segments:
        segs = []
        for s in msg.segments:
            seg: dict[str, Any] = {"dim": s.dim}
            if s.HasField("initializer"):
                seg["initializer"] = _typed_from_proto(s.initializer)
            if s.HasField("optimizer"):
                seg["optimizer"] = _typed_from_proto(s.optimizer)
            seg.update(_params_from_proto(s.extra))
            segs.append(seg)
        config["segments"] = segs
    if msg.HasField("dim"):
        config["dim"] = msg.dim
    if msg.HasField("initializer"):
        config["initializer"] = _typed_from_proto(msg.initializer)
    if msg.HasField("optimizer"):
        config["optimizer"] = _typed_from_proto(msg.optimizer)
    if msg.HasField("occurrence_threshold"):
        config["occurrence_threshold"] = msg.occurrence_threshold
    if msg.HasField("expire_time_days"):
        days = msg.expire_time_days
        config["expire_time_days"] = int(days) if days.is_integer() else days  # 36500 == 36500.0 anyway
    config.update(_params_from_proto(msg.extra))
    return config


def optimizer_to_proto(optimizer: dict[str, Any], out: ps_pb2.Optimizer, where: str) -> None:
    _typed_to_proto(optimizer, out, where)


def optimizer_from_proto(msg: ps_pb2.Optimizer) -> dict[str, Any]:
    return _typed_from_proto(msg)
