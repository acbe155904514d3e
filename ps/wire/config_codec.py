"""Configs on the wire: `ps.config` types to and from their protos, losslessly.

Clients validate a user's dict once (`TableConfig.from_dict`) and send the normalized config; a shard
rebuilds the same `TableConfig` from the proto, which validates it again at the shard's own boundary
(a request from the network is never trusted). Parameter values keep their type (int, float, bool).
"""
from __future__ import annotations

from typing import Any

from protos import ps_pb2
from ps.config import InitializerConfig, OptimizerConfig, TableConfig


def _params_to_proto(values: dict[str, Any], out: ps_pb2.Params) -> None:
    for key, value in values.items():
        if isinstance(value, bool):
            out.flags[key] = value
        elif isinstance(value, int):
            out.ints[key] = value
        else:
            out.floats[key] = float(value)


def _params_from_proto(p: ps_pb2.Params) -> dict[str, Any]:
    return {**p.floats, **p.ints, **p.flags}


def _typed_to_proto(config: InitializerConfig | OptimizerConfig, out: ps_pb2.Initializer | ps_pb2.Optimizer) -> None:
    out.type = config.type
    _params_to_proto(config.params, out.params)


def _typed_from_proto(msg: ps_pb2.Initializer | ps_pb2.Optimizer) -> dict[str, Any]:
    return {"type": msg.type, **_params_from_proto(msg.params)}


def table_config_to_proto(name: str, config: TableConfig) -> ps_pb2.TableConfig:
    if not isinstance(name, str) or not name:
        raise ValueError(f"table name must be a non-empty string, got {name!r}")
    msg = ps_pb2.TableConfig(name=name, occurrence_threshold=config.occurrence_threshold,
                             expire_time_days=config.expire_time_days, initial_capacity=config.initial_capacity,
                             filter_capacity=config.filter_capacity)
    for seg in config.segments:
        out = msg.segments.add(dim=seg.dim)
        _typed_to_proto(seg.initializer, out.initializer)
        _typed_to_proto(seg.optimizer, out.optimizer)
    return msg


def table_config_from_proto(msg: ps_pb2.TableConfig) -> TableConfig:
    """The `TableConfig` that was encoded (validated again: ValueError naming the field if it is not valid)."""
    return TableConfig.from_dict({
        "segments": [{"dim": s.dim, "initializer": _typed_from_proto(s.initializer),
                      "optimizer": _typed_from_proto(s.optimizer)} for s in msg.segments],
        "occurrence_threshold": msg.occurrence_threshold, "expire_time_days": msg.expire_time_days,
        "initial_capacity": msg.initial_capacity, "filter_capacity": msg.filter_capacity,
    })


def optimizer_to_proto(config: OptimizerConfig, out: ps_pb2.Optimizer) -> None:
    _typed_to_proto(config, out)


def optimizer_from_proto(msg: ps_pb2.Optimizer) -> OptimizerConfig:
    return OptimizerConfig.from_dict(_typed_from_proto(msg))
