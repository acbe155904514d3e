"""Plain Python values <-> the dump's typed `Value`: scalars as themselves, anything else as JSON, nothing pickled."""
from __future__ import annotations

import json
from typing import Any

from protos import model_dump_pb2 as pb


class NotDumpable(ValueError):
    """A value that is neither a scalar nor JSON-serializable."""


def to_value(value: Any) -> pb.Value:
    if value is None:
        return pb.Value(none_value=True)
    if isinstance(value, bool):
        return pb.Value(bool_value=value)
    if isinstance(value, int):
        return pb.Value(int_value=value)
    if isinstance(value, float):
        return pb.Value(float_value=value)
    if isinstance(value, str):
        return pb.Value(string_value=value)
    try:
        return pb.Value(json_value=json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise NotDumpable(f"{type(value).__name__} value {value!r} is not a scalar or JSON: {exc}") from exc


def from_value(value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "none_value":
        return None
    if kind == "json_value":
        return json.loads(value.json_value)
    return getattr(value, kind)


def to_entry_config(cfg: dict[str, Any]) -> pb.EntryConfig:
    return pb.EntryConfig(type=cfg["type"], settings={k: to_value(v) for k, v in cfg.items() if k != "type"})


def from_entry_config(cfg: pb.EntryConfig) -> dict[str, Any]:
    return {"type": cfg.type, **{k: from_value(v) for k, v in sorted(cfg.settings.items())}}
