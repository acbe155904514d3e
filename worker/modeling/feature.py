"""Feature slots (one PS table each), their slices (segments of the table row) and feature columns.

A slot's slices are laid out contiguously in the table row; each keeps its own initializer, optimizer
and learning-rate function, so one table row is several independently optimised segments.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import tensorflow as tf

from worker.modeling import combiners as combiners_mod
from worker.modeling import lookup_inputs
from worker.modeling.segment_configs import (
    AdagradOptimizer,
    FtrlOptimizer,
    RandomUniformInitializer,
    ZerosInitializer,
    to_config,
)

log = logging.getLogger(__name__)


@dataclass
class FeatureSlotConfig:
    """A table's settings; the defaults are Monolith's `FeatureSlotConfig` defaults (docs/defaults.md): a
    slice that names no initializer/optimizer gets the `default_vec_*` ones (note Adagrad's accumulator
    starts at 1.0 here, as in Monolith, not at `AdagradOptimizer()`'s 0.1)."""

    name: str
    has_bias: bool = False
    bias_initializer: Any = field(default_factory=ZerosInitializer)
    bias_optimizer: Any = field(default_factory=lambda: FtrlOptimizer(learning_rate=0.01,
                                                                       initial_accumulator_value=1e-6, beta=1.0))
    default_vec_initializer: Any = field(default_factory=lambda: RandomUniformInitializer(-0.05, 0.05))
    default_vec_optimizer: Any = field(default_factory=lambda: AdagradOptimizer(learning_rate=0.001,
                                                                                 initial_accumulator_value=1.0))
    occurrence_threshold: int = 0
    expire_time: int = 36500
    slot_id: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"FeatureSlotConfig.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.occurrence_threshold, int) or self.occurrence_threshold < 0:
            raise ValueError(f"FeatureSlotConfig.occurrence_threshold must be an int >= 0, "
                             f"got {self.occurrence_threshold!r} (slot {self.name!r})")
        if not isinstance(self.expire_time, (int, float)) or self.expire_time <= 0:
            raise ValueError(f"FeatureSlotConfig.expire_time must be > 0 days, got {self.expire_time!r} "
                             f"(slot {self.name!r})")


@dataclass(frozen=True)
class FeatureSlice:
    slot: FeatureSlot
    start: int
    end: int
    name: str

    @property
    def dim(self) -> int:
        return self.end - self.start

    def __repr__(self) -> str:
        return f"FeatureSlice({self.slot.name}:{self.start}_{self.end})"


def _learning_rate(fn: Any, optimizer_cfg: dict[str, Any], global_step: int) -> float:
    if fn is None:
        return float(optimizer_cfg.get("learning_rate", 0.0))
    if isinstance(fn, (int, float)):
        return float(fn)
    if hasattr(fn, "value"):
        return float(fn.value(global_step))
    if callable(fn):
        return float(fn(global_step))
    raise ValueError(f"learning_rate_fn must be a float, a callable(step) or have value(step), got {fn!r}")


class FeatureSlot:
    """One embedding table: an ordered list of slices. Frozen once its table exists."""

    def __init__(self, config: FeatureSlotConfig) -> None:
        self.config = config
        self.slices: list[FeatureSlice] = []
        self._segments: list[dict[str, Any]] = []
        self._lr_fns: list[Any] = []
        self.frozen = False
        self.bias_slice = None
        if config.has_bias:
            self.bias_slice = self.add_feature_slice(1, config.bias_initializer, config.bias_optimizer, name="bias")

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def slot(self) -> int | None:
        return self.config.slot_id

    @property
    def dim(self) -> int:
        return self.slices[-1].end if self.slices else 0

    def add_feature_slice(self, dim: int, initializer=None, optimizer=None, compressor=None, learning_rate_fn=None,
                          name: str | None = None) -> FeatureSlice:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"slice dim of table {self.name!r} must be a positive int, got {dim!r}")
        if self.frozen:
            raise ValueError(f"table {self.name!r} already exists with slices "
                             f"{[s.name for s in self.slices]}; cannot add slice {name!r} after the first trace")
        init_cfg = to_config(initializer or self.config.default_vec_initializer, f"initializer of {self.name!r}")
        opt_cfg = to_config(optimizer or self.config.default_vec_optimizer, f"optimizer of {self.name!r}")
        start = self.dim
        fs = FeatureSlice(self, start, start + dim, name or f"slice{len(self.slices)}")
        if initializer is None or optimizer is None:
            log.info("slice %r of table %r uses the table's default %s (docs/defaults.md)", fs.name, self.name,
                     " and ".join(f"{what} {cfg}" for what, cfg, given in (("initializer", init_cfg, initializer),
                                                                          ("optimizer", opt_cfg, optimizer))
                                  if given is None))
        self.slices.append(fs)
        self._segments.append({"dim": dim, "initializer": init_cfg, "optimizer": opt_cfg})
        self._lr_fns.append(learning_rate_fn)
        return fs

    def table_config(self) -> dict[str, Any]:
        if not self.slices:
            raise ValueError(f"table {self.name!r} has no slices: look up at least one slice of it")
        return {"segments": [dict(s) for s in self._segments],
                "occurrence_threshold": self.config.occurrence_threshold,
                "expire_time_days": self.config.expire_time}

    def segments(self) -> list[tuple[FeatureSlice, dict[str, Any], Any]]:
        """Each slice with its segment config and its learning_rate_fn (None: the optimizer's rate)."""
        return list(zip(self.slices, (dict(s) for s in self._segments), self._lr_fns))

    def learning_rates(self, global_step: int) -> list[float]:
        """One learning rate per segment at `global_step` (each slice's function, or its optimizer's rate)."""
        return [_learning_rate(fn, seg["optimizer"], global_step) for fn, seg in zip(self._lr_fns, self._segments)]


class FeatureColumn:
    """A feature (a ragged int64 id input) read through a slot's table, pooled by a combiner."""

    def __init__(self, slot: FeatureSlot, feature_name: str, combiner=None) -> None:
        self.slot = slot
        self.feature_name = feature_name
        self.combiner = combiner if combiner is not None else combiners_mod.ReduceSum()

    def embedding_lookup(self, fs: FeatureSlice) -> tf.Tensor:
        if fs.slot is not self.slot:
            raise ValueError(f"slice {fs!r} belongs to table {fs.slot.name!r}, not to {self.slot.name!r} "
                             f"of feature {self.feature_name!r}")
        inputs = lookup_inputs.current()
        if inputs is None:
            raise RuntimeError("embedding_lookup called outside a worker step (no looked-up rows available)")
        if self.feature_name not in inputs.rows:
            raise ValueError(f"feature {self.feature_name!r} is not a ragged int64 input; ragged inputs are "
                             f"{sorted(inputs.rows)}")
        inputs.used.add(self.feature_name)
        rows = tf.ensure_shape(inputs.rows[self.feature_name][:, fs.start:fs.end], [None, fs.dim])
        return self.combiner.combine_rows(rows, inputs.index[self.feature_name], inputs.row_splits[self.feature_name],
                                          fs.dim)

    def get_bias(self) -> tf.Tensor:
        if self.slot.bias_slice is None:
            raise ValueError(f"table {self.slot.name!r} has no bias (FeatureSlotConfig.has_bias=False)")
        return self.embedding_lookup(self.slot.bias_slice)


class FeatureFactory:
    """Creates feature slots (tables) and applies embedding gradients through a sparse backend."""

    def __init__(self) -> None:
        self.slots: dict[str, FeatureSlot] = {}
        self.backend = None

    def create_feature_slot(self, config: FeatureSlotConfig) -> FeatureSlot:
        if config.name in self.slots:
            return self.slots[config.name]
        slot = self.slots[config.name] = FeatureSlot(config)
        return slot

    def table_configs(self) -> dict[str, dict[str, Any]]:
        return {name: slot.table_config() for name, slot in sorted(self.slots.items()) if slot.slices}

    def apply_gradients(self, grads_and_vars, scale=1, global_step: int = 0):
        """`grads_and_vars`: {table: (ids, grads)}; applies `grads * scale` with each slice's learning rate."""
        if self.backend is None:
            raise RuntimeError("FeatureFactory has no backend yet: tables are created by the Estimator")
        updates, lrs = {}, {}
        for table, (ids, grads) in grads_and_vars.items():
            if table not in self.slots:
                raise ValueError(f"unknown table {table!r}; tables are {sorted(self.slots)}")
            updates[table] = (ids, grads if scale == 1 else grads * scale)
            lrs[table] = self.slots[table].learning_rates(global_step)
        return self.backend.apply_gradients(updates, global_step=global_step, learning_rates=lrs)
