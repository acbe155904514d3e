"""Validated table configuration: segments (dim + initializer + optimizer), admission, expiry, sizing.

`TableConfig.from_dict` accepts the user-facing dict (either one "dim" with top-level initializer and
optimizer, or a "segments" list) and `to_dict` returns the normalized form with every default filled
in, so two configs that behave identically compare equal and `from_dict(to_dict())` round-trips.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


# -- optimizers: config keys, defaults and checks (how they run: ps.store.optimizers) -----------------
@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    defaults: dict
    row_dim: int | None = None
    """A segment using this optimizer must have exactly this dim (None: any)."""
    checks: tuple = ()
    """(key, predicate, message) triples validated at config time."""
    joint_check: Callable | None = None
    """params -> (ok, key, message) for constraints spanning several keys."""

    def validate(self, params: dict, field: str) -> None:
        for key, ok, why in self.checks:
            if not ok(params[key]):
                raise ValueError(f"table config: {field}.{key}={params[key]!r}: {why}")
        if self.joint_check is not None:
            ok, key, why = self.joint_check(params)
            if not ok:
                raise ValueError(f"table config: {field}.{key}={params[key]!r}: {why}")
        wd = params.get("weight_decay_factor", 0.0)
        if wd < 0:
            raise ValueError(f"table config: {field}.weight_decay_factor={wd!r}: must be >= 0")


_nonneg = ("must be >= 0", lambda v: v >= 0)
_unit = ("must be in [0, 1)", lambda v: 0 <= v < 1)


def _checks(**kw):
    return tuple((key, pred, why) for key, (why, pred) in kw.items())


_WD = {"weight_decay_factor": 0.0}
_ADAM = {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.99, "epsilon": 0.01, **_WD}
_ADAM_CHECKS = _checks(beta1=_unit, beta2=_unit, epsilon=_nonneg, learning_rate=_nonneg)

OPTIMIZER_SPECS: dict[str, OptimizerSpec] = {o.name: o for o in [
    OptimizerSpec("sgd", {"learning_rate": 0.01, **_WD}, checks=_checks(learning_rate=_nonneg)),
    OptimizerSpec("adagrad", {"learning_rate": 0.001, "initial_accumulator_value": 0.1, "epsilon": 0.0, **_WD},
                  checks=_checks(learning_rate=_nonneg, epsilon=_nonneg, initial_accumulator_value=_nonneg),
                  joint_check=lambda p: (p["initial_accumulator_value"] > 0 or p["epsilon"] > 0,
                                         "initial_accumulator_value", "must be > 0 when epsilon is 0")),
    OptimizerSpec("ftrl", {"learning_rate": 0.01, "learning_rate_power": -0.5, "initial_accumulator_value": 0.1,
                           "beta": 0.0, "l1_regularization_strength": 0.0, "l2_regularization_strength": 0.0, **_WD},
                  checks=_checks(learning_rate=("must be > 0", lambda v: v > 0), initial_accumulator_value=_nonneg,
                                 learning_rate_power=("must be <= 0", lambda v: v <= 0), beta=_nonneg,
                                 l1_regularization_strength=_nonneg, l2_regularization_strength=_nonneg)),
    OptimizerSpec("momentum", {"learning_rate": 0.01, "momentum": 0.9, "use_nesterov": False, **_WD},
                  checks=_checks(learning_rate=_nonneg, momentum=_nonneg)),
    OptimizerSpec("rmsprop", {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0, "epsilon": 1e-7,
                              "centered": False, **_WD},
                  checks=_checks(learning_rate=_nonneg, rho=_unit, momentum=_nonneg,
                                 epsilon=("must be > 0", lambda v: v > 0))),
    OptimizerSpec("adadelta", {"learning_rate": 0.01, "rho": 0.9, "epsilon": 0.01, **_WD},
                  checks=_checks(learning_rate=_nonneg, rho=_unit, epsilon=("must be > 0", lambda v: v > 0))),
    OptimizerSpec("adam", {**_ADAM, "use_nesterov": False}, checks=_ADAM_CHECKS),
    OptimizerSpec("amsgrad", dict(_ADAM), checks=_ADAM_CHECKS),
    OptimizerSpec("group_adagrad", {"learning_rate": 0.01, "beta": 0.0, "initial_accumulator_value": 0.1,
                                    "l2_regularization_strength": 0.0, **_WD},
                  checks=_checks(learning_rate=_nonneg, beta=_nonneg, initial_accumulator_value=_nonneg,
                                 l2_regularization_strength=_nonneg)),
    OptimizerSpec("moving_average", {"momentum": 0.9, **_WD},
                  checks=_checks(momentum=("must be in [0, 1]", lambda v: 0 <= v <= 1))),
    OptimizerSpec("batch_softmax", {"learning_rate": 0.1, **_WD}, row_dim=1,
                  checks=_checks(learning_rate=("must be in [0, 1]", lambda v: 0 <= v <= 1))),
]}
"""Defaults are Monolith's proto defaults where Monolith has the optimizer, TensorFlow's otherwise."""


INITIALIZERS: dict[str, dict[str, object]] = {
    "zeros": {},
    "ones": {},
    "constant": {"value": 0.0},
    "random_uniform": {"minval": -0.05, "maxval": 0.05, "seed": 0},
}
_TABLE_KEYS = {"dim", "segments", "initializer", "optimizer", "occurrence_threshold", "expire_time_days",
               "initial_capacity", "filter_capacity"}
_SEGMENT_KEYS = {"dim", "initializer", "optimizer"}
MAX_OCCURRENCE_THRESHOLD = 65534
"""Admission counters are 16-bit saturating, so thresholds up to 65534 are reachable."""


def _fail(field: str, value: object, why: str) -> ValueError:
    return ValueError(f"table config: {field}={value!r}: {why}")


def _coerce(field: str, value: object, default: Any) -> Any:
    """Coerce `value` to the type of `default`, rejecting anything lossy, non-finite or of the wrong kind."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise _fail(field, value, "must be a bool")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise _fail(field, value, "must be an integer")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(field, value, "must be a finite number")
    return float(value)


def _typed_params(field: str, spec: object, known: dict[str, dict[str, object]]) -> tuple[str, dict]:
    if not isinstance(spec, dict) or "type" not in spec:
        raise _fail(field, spec, "must be a dict with a 'type'")
    kind = spec["type"]
    if kind not in known:
        raise _fail(f"{field}.type", kind, f"unknown; expected one of {sorted(known)}")
    defaults = known[kind]
    params = {}
    for key, value in spec.items():
        if key == "type":
            continue
        if key not in defaults:
            raise _fail(f"{field}.{key}", value, f"unknown key for {field} type {kind!r}; expected {sorted(defaults)}")
        params[key] = _coerce(f"{field}.{key}", value, defaults[key])
    return kind, {**defaults, **params}


@dataclass(frozen=True)
class InitializerConfig:
    type: str
    params: dict

    @classmethod
    def from_dict(cls, spec: object, field: str = "initializer") -> InitializerConfig:
        kind, params = _typed_params(field, spec, INITIALIZERS)
        if kind == "random_uniform" and not params["minval"] <= params["maxval"]:
            raise _fail(f"{field}.minval", params["minval"], f"must be <= maxval={params['maxval']}")
        if kind == "random_uniform" and params["seed"] < 0:
            raise _fail(f"{field}.seed", params["seed"], "must be >= 0")
        return cls(kind, params)

    def to_dict(self) -> dict:
        return {"type": self.type, **self.params}


@dataclass(frozen=True)
class OptimizerConfig:
    type: str
    params: dict

    @classmethod
    def of(cls, spec: OptimizerConfig | object, field: str = "optimizer") -> OptimizerConfig:
        return spec if isinstance(spec, OptimizerConfig) else cls.from_dict(spec, field)

    @classmethod
    def from_dict(cls, spec: object, field: str = "optimizer") -> OptimizerConfig:
        defaults = {name: opt.defaults for name, opt in OPTIMIZER_SPECS.items()}
        kind, params = _typed_params(field, spec, defaults)
        OPTIMIZER_SPECS[kind].validate(params, field)
        return cls(kind, params)

    def to_dict(self) -> dict:
        return {"type": self.type, **self.params}


@dataclass(frozen=True)
class SegmentConfig:
    dim: int
    initializer: InitializerConfig
    optimizer: OptimizerConfig

    def to_dict(self) -> dict:
        return {"dim": self.dim, "initializer": self.initializer.to_dict(), "optimizer": self.optimizer.to_dict()}


def _check_keys(prefix: str, cfg: dict, known: set[str]) -> None:
    for key in cfg:
        if key not in known:
            raise _fail(f"{prefix}{key}", cfg[key], f"unknown key; expected one of {sorted(known)}")


def _raw_segments(cfg: dict) -> list | tuple:
    """The user's segment dicts: the "segments" list, or the one-segment shorthand {"dim": ...}."""
    if "segments" in cfg:
        raw = cfg["segments"]
        if not isinstance(raw, list | tuple) or not raw:
            raise _fail("segments", raw, "must be a non-empty list")
        return raw
    if "dim" in cfg:
        return [{"dim": cfg["dim"]}]
    raise _fail("dim", None, "one of 'dim' or 'segments' is required")


def _segment(field: str, seg: object, cfg: dict) -> SegmentConfig:
    """One segment; its initializer and optimizer default to the table's top-level ones."""
    if not isinstance(seg, dict):
        raise _fail(field, seg, "must be a dict")
    _check_keys(f"{field}.", seg, _SEGMENT_KEYS)
    dim = _coerce(f"{field}.dim", seg.get("dim"), 0) if "dim" in seg else None
    if dim is None or dim <= 0:
        raise _fail(f"{field}.dim", seg.get("dim"), "must be a positive integer")
    top_init = cfg.get("initializer")
    init_spec = seg.get("initializer", top_init if top_init is not None else {"type": "zeros"})
    if "optimizer" not in seg and cfg.get("optimizer") is None:
        raise _fail(f"{field}.optimizer", None, "an optimizer is required")
    opt = OptimizerConfig.from_dict(seg.get("optimizer", cfg.get("optimizer")), f"{field}.optimizer")
    row_dim = OPTIMIZER_SPECS[opt.type].row_dim
    if row_dim is not None and dim != row_dim:
        raise _fail(f"{field}.dim", dim, f"optimizer {opt.type!r} needs dim {row_dim}")
    return SegmentConfig(dim, InitializerConfig.from_dict(init_spec, f"{field}.initializer"), opt)


@dataclass(frozen=True)
class TableConfig:
    segments: tuple[SegmentConfig, ...]
    occurrence_threshold: int = 0
    expire_time_days: int = 36500
    initial_capacity: int = 1
    """Rows allocated (and pre-touched) up front; the table grows geometrically past it. The default of 1
    suits dense parameters stored as one wide row; pre-size big sparse tables to skip growth."""
    filter_capacity: int = 1 << 20

    @property
    def dim(self) -> int:
        return sum(s.dim for s in self.segments)

    @classmethod
    def of(cls, cfg: TableConfig | object) -> TableConfig:
        """`cfg` itself if it is one, else `from_dict(cfg)`: the one way a user's dict becomes a config."""
        return cfg if isinstance(cfg, TableConfig) else cls.from_dict(cfg)

    @classmethod
    def from_dict(cls, cfg: object) -> TableConfig:
        if not isinstance(cfg, dict):
            raise TypeError(f"table config must be a dict, got {type(cfg).__name__}")
        _check_keys("", cfg, _TABLE_KEYS)
        segments = tuple(_segment(f"segments[{i}]", seg, cfg) for i, seg in enumerate(_raw_segments(cfg)))
        scalars = {f.name: _coerce(f.name, cfg.get(f.name, f.default), f.default)
                   for f in dataclasses.fields(cls) if f.name != "segments"}
        out = cls(segments=segments, **scalars)
        if "segments" in cfg and "dim" in cfg and cfg["dim"] != out.dim:
            raise _fail("dim", cfg["dim"], f"does not equal the sum of segment dims {out.dim}")
        out._check_ranges()
        return out

    def _check_ranges(self) -> None:
        if not 0 <= self.occurrence_threshold <= MAX_OCCURRENCE_THRESHOLD:
            raise _fail("occurrence_threshold", self.occurrence_threshold,
                        f"must be in [0, {MAX_OCCURRENCE_THRESHOLD}]")
        if self.expire_time_days < 0:
            raise _fail("expire_time_days", self.expire_time_days, "must be >= 0")
        if self.initial_capacity < 1:
            raise _fail("initial_capacity", self.initial_capacity, "must be >= 1")
        if self.filter_capacity < 64:
            raise _fail("filter_capacity", self.filter_capacity, "must be >= 64")

    def to_dict(self) -> dict:
        return {
            "segments": [s.to_dict() for s in self.segments],
            "occurrence_threshold": self.occurrence_threshold,
            "expire_time_days": self.expire_time_days,
            "initial_capacity": self.initial_capacity,
            "filter_capacity": self.filter_capacity,
        }


# -- processes --------------------------------------------------------------------------------------
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024
"""The largest request or reply a shard and its clients accept (one default for both ends)."""
DEFAULT_KEEP_CHECKPOINTS = 5
"""Complete checkpoints kept per directory."""
SERVER_MODELS = ("sync", "aio")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class ServerConfig:
    """How one shard process serves: the `monolith ps` flags, with their defaults, checked together."""

    port: int
    shard_index: int = 0
    num_shards: int = 1
    host: str = "127.0.0.1"
    checkpoint_dir: str | None = None
    save_on_exit: bool = False
    metrics_port: int = 0
    """0: any free port (logged); -1: no metrics server."""
    server_model: str = "sync"
    threads: int = 8
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    grace_s: float = 10.0
    sync_interval_s: float = 0.0
    """The online sync to serving shards every this many seconds (0: off; ps/service/sync_sender.py)."""
    sync_serving_ps: tuple[str, ...] = ()
    """host:port of serving PS shard j at position j."""
    sync_float16: bool = False
    dense_sync_interval_s: float = 0.0
    """The dense variables to the entry servers every this many seconds (0: off; ps/service/dense_sync_sender.py)."""
    sync_entry_servers: tuple[str, ...] = ()
    """host:port of every entry server (`monolith serve --dense-sync`)."""
    sync_max_backoff_s: float = 30.0
    """Longest wait before retrying a serving shard or entry server that failed (the wait doubles from the
    interval)."""

    def __post_init__(self) -> None:
        _require(self.dense_sync_interval_s >= 0,
                 f"--dense-sync-interval-s must be >= 0, got {self.dense_sync_interval_s}")
        _require(not self.dense_sync_interval_s or bool(self.sync_entry_servers),
                 "--dense-sync-interval-s needs --sync-entry-servers (the entry servers' addresses)")
        _require(all(a.rpartition(":")[2].isdigit() for a in self.sync_entry_servers),
                 f"--sync-entry-servers must be host:port,... got {list(self.sync_entry_servers)}")
        _require(self.sync_interval_s >= 0, f"--sync-interval-s must be >= 0, got {self.sync_interval_s}")
        _require(not self.sync_interval_s or bool(self.sync_serving_ps),
                 "--sync-interval-s needs --sync-serving-ps (the serving PS shards' addresses)")
        _require(self.sync_max_backoff_s > 0, f"--sync-max-backoff-s must be > 0, got {self.sync_max_backoff_s}")
        _require(0 <= self.port < 65536, f"--port must be in [0, 65535], got {self.port}")
        _require(self.num_shards >= 1 and 0 <= self.shard_index < self.num_shards,
                 f"--shard-index must be in [0, --num-shards), got {self.shard_index} of {self.num_shards}")
        _require(not self.save_on_exit or bool(self.checkpoint_dir),
                 "--save-on-exit needs --checkpoint-dir (where the exit snapshot goes)")
        _require(self.server_model in SERVER_MODELS,
                 f"--server-model must be one of {SERVER_MODELS}, got {self.server_model!r}")
        _require(self.threads >= 1, f"--threads must be >= 1, got {self.threads}")
        _require(self.max_message_bytes >= 1 << 20, f"max message size must be >= 1 MiB, got {self.max_message_bytes}")
        _require(self.grace_s >= 0, f"--grace-s must be >= 0, got {self.grace_s}")
        _require(self.metrics_port >= -1, f"--metrics-port must be >= -1, got {self.metrics_port}")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ClientConfig:
    """How a `PSClient` talks to the shards: deadlines, retries, transport. Defaults are the ones documented
    on `PSClient`; `PSClient(addresses, timeout_s=...)` overrides single fields."""

    timeout_s: float = 30.0
    retries: int = 6
    """Retries of a call that failed UNAVAILABLE (or DEADLINE_EXCEEDED, for idempotent calls)."""
    backoff_s: float = 0.2
    max_backoff_s: float = 4.0
    float16_lookup: bool = False
    """Rows of a lookup travel as float16 (half the reply bytes; the PS still computes in float32)."""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS
    checkpoint_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        _require(self.timeout_s > 0 and self.checkpoint_timeout_s > 0,
                 f"timeout_s and checkpoint_timeout_s must be > 0, got {self.timeout_s}, {self.checkpoint_timeout_s}")
        _require(self.retries >= 0, f"retries must be >= 0, got {self.retries}")
        _require(0 <= self.backoff_s <= self.max_backoff_s,
                 f"need 0 <= backoff_s <= max_backoff_s, got {self.backoff_s}, {self.max_backoff_s}")
        _require(self.max_message_bytes >= 1 << 16,
                 f"max_message_bytes must be >= 64 KiB, got {self.max_message_bytes}")
        _require(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
