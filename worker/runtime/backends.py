"""Where parameters live, behind one `ParameterBackend` protocol the training loop talks to.

- `LocalBackend`: an in-process PS shard (`ShardState(0, 1)`, the same code a PS process runs) holds
  the embedding tables and the global step; the dense variables stay in the training graph with their
  Keras optimizer (fast), converted to the shard's form only when a checkpoint is written or read.
- `RemoteBackend`: PS shards over gRPC (`PSClient`): tables, dense variables (with the PS equivalent of
  the Keras optimizer) and the global step live on the shards.

Both write and read the same coordinated checkpoints (`ps.persist.coordinator`): a checkpoint written
locally restores onto any number of PS shards, and the reverse.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from ps.config import DEFAULT_KEEP_CHECKPOINTS
from ps.persist.checkpoint import StreamOffsets
from ps.persist.coordinator import CheckpointCoordinator
from ps.store.shard_state import ShardState
from worker.runtime.dense_state import DenseVariables, export_dense, import_dense, keras_optimizer_config

log = logging.getLogger(__name__)

_CHIEF = "worker:0"

SparseUpdates = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""{table: (ids, row gradients)}: distinct ids, except for tables that count occurrences (admission)."""


class ParameterBackend(Protocol):
    """Every parameter the training loop reads or writes goes through one of these."""

    distributed: bool
    cluster_id: str | None
    """Identifies this launch of the job: scopes barriers and tf.data job names (None in local mode)."""

    def create_tables(self, configs: Mapping[str, dict]) -> None: ...

    def lookup(self, ids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows of distinct ids per table (absent ids read as zeros)."""
        ...

    def lookup_step(self, ids: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """A step's reads: `lookup(ids)` and `pull_dense()` together."""
        ...

    def apply_gradients(self, updates: SparseUpdates, global_step: int,
                        learning_rates: Mapping[str, list[float]]) -> None:
        """One optimizer step per id with each table segment's learning rate."""
        ...

    def create_dense(self, dense: DenseVariables, optimizer: Any | None) -> None:
        """`optimizer` None: variables only (eval/predict); called again with the train optimizer."""
        ...

    def pull_dense(self) -> dict[str, np.ndarray] | None:
        """Current dense values when they live elsewhere (None: the graph's variables are current)."""
        ...

    def push_dense(self, grads: list[tf.Tensor], global_step: int, learning_rate: float | None = None) -> None: ...

    def global_step(self) -> int: ...

    def claim_global_step(self, limit: int) -> tuple[int, bool]:
        """Add 1 to the global step unless that would pass `limit`: (global step, whether it was added)."""
        ...

    def push_step(self, updates: SparseUpdates, dense_grads: list[np.ndarray] | None, global_step: int,
                  learning_rates: Mapping[str, list[float]], limit: int,
                  sole_claimer: bool = False) -> tuple[int, bool]:
        """A training step's updates: claim the step (as `claim_global_step(limit)`) and, only if that was
        granted, apply its row gradients and dense gradients (None: none leave the graph). Returns the claim.
        `sole_claimer`: the caller is the job's only worker and never claims past `limit` (the claim cannot
        be refused, so every shard's part may go out at once)."""
        ...

    def save(self, model_dir: str, step: int, stream_offsets: StreamOffsets | None = None) -> str:
        """A coordinated checkpoint; `stream_offsets` go into its manifest (a job training from a stream)."""
        ...

    def restore(self, model_dir: str, step: int | None = None) -> int | None:
        """The global step of the restored checkpoint; None when `model_dir` has none (and `step` is None)."""
        ...

    def table_sizes(self) -> dict[str, int]: ...

    def mark_ready(self, note: bytes = b"") -> None:
        """The chief has restored (or found nothing to restore): other workers may start (`note` for them)."""
        ...

    def wait_ready(self, timeout_s: float) -> bytes:
        """Wait for the chief's `mark_ready`; its note."""
        ...

    def wait_for_workers(self, name: str, worker_index: int, num_workers: int, timeout_s: float,
                         note: bytes = b"") -> dict[str, bytes]:
        """Arrive at this launch's barrier `name` (leaving `note`) and wait (bounded) until every worker has;
        every worker's note by `worker:<i>`."""
        ...

    def arrive(self, name: str, participant: str | None, expected: int, note: bytes = b"") -> dict[str, bytes]:
        """Arrive at this launch's barrier `name` (None: only look) without waiting; who has arrived so far,
        with their notes."""
        ...

    def close(self) -> None: ...


class LocalBackend:
    """An in-process PS shard for the tables; the dense variables train in the graph."""

    distributed = False
    cluster_id: str | None = None

    def __init__(self, keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS) -> None:
        self.shard = ShardState(0, 1)
        self.keep_checkpoints = keep_checkpoints
        self._dense: DenseVariables | None = None
        self._optimizer: Any = None
        self._apply_fn: Any = None
        self._restored_dense = False  # shard.dense holds a restored checkpoint's dense part

    # sparse
    def create_tables(self, configs: Mapping[str, dict]) -> None:
        for name, cfg in configs.items():
            self.shard.create_table(name, cfg)

    def lookup(self, ids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: self.shard.table(name).lookup(v) for name, v in ids.items()}

    def lookup_step(self, ids: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        return self.lookup(ids), None

    def apply_gradients(self, updates: SparseUpdates, global_step: int = 0,
                        learning_rates: Mapping[str, list[float]] | None = None) -> None:
        for name, (ids, grads) in updates.items():
            lrs = (learning_rates or {}).get(name)
            self.shard.table(name).apply_gradients(ids, grads, global_step=global_step, learning_rates=lrs)

    def table_sizes(self) -> dict[str, int]:
        return {name: int(t.size) for name, t in self.shard.tables.items()}

    # dense
    def create_dense(self, dense: DenseVariables, optimizer: Any | None) -> None:
        self._dense, self._optimizer = dense, optimizer
        if dense.variables and optimizer is not None:
            optimizer.build(dense.variables)

            @tf.function(input_signature=[tf.TensorSpec(v.shape, v.dtype) for v in dense.variables])
            def apply(*grads):
                optimizer.apply_gradients(zip(grads, dense.variables))

            self._apply_fn = apply.get_concrete_function()
            if self._restored_dense:  # restored before the optimizer existed: its state comes now
                import_dense(self.shard, dense, optimizer)

    def pull_dense(self) -> dict[str, np.ndarray] | None:
        return None

    def push_dense(self, grads: list[tf.Tensor], global_step: int, learning_rate: float | None = None) -> None:
        if self._apply_fn is not None:
            self._apply_fn(*grads)

    # global step
    def global_step(self) -> int:
        return self.shard.global_step

    def claim_global_step(self, limit: int) -> tuple[int, bool]:
        return self.shard.increment_global_step(1, limit)

    def push_step(self, updates: SparseUpdates, dense_grads: list[np.ndarray] | None, global_step: int,
                  learning_rates: Mapping[str, list[float]], limit: int,
                  sole_claimer: bool = False) -> tuple[int, bool]:
        claimed, granted = self.claim_global_step(limit)
        if granted:
            self.apply_gradients(updates, global_step, learning_rates)
            if dense_grads is not None:
                self.push_dense(dense_grads, global_step)
        return claimed, granted

    # checkpoints: the coordinated layout, written by the in-process shard
    def _checkpoints(self, model_dir: str) -> CheckpointCoordinator:
        return CheckpointCoordinator(model_dir, 1, self.keep_checkpoints)

    def save(self, model_dir: str, step: int, stream_offsets: StreamOffsets | None = None) -> str:
        if self._dense is not None:
            export_dense(self.shard, self._dense, self._optimizer)
        path = self._checkpoints(model_dir).save(step, lambda p, s: self.shard.save(str(p), s), stream_offsets)
        self.shard.dense.clear()  # the graph's variables stay the truth
        self._restored_dense = False
        return str(path)

    def restore(self, model_dir: str, step: int | None = None) -> int | None:
        checkpoints = self._checkpoints(model_dir)
        if step is None and checkpoints.latest() is None:
            return None
        checkpoints.restore(step, lambda path: self.shard.restore(str(path)))
        self._restored_dense = True
        if self._dense is not None:
            import_dense(self.shard, self._dense, self._optimizer)
        return self.shard.global_step

    def mark_ready(self, note: bytes = b"") -> None:
        pass

    def wait_ready(self, timeout_s: float) -> bytes:
        return b""

    def wait_for_workers(self, name: str, worker_index: int, num_workers: int, timeout_s: float,
                         note: bytes = b"") -> dict[str, bytes]:
        return {f"worker:{worker_index}": note}

    def arrive(self, name: str, participant: str | None, expected: int, note: bytes = b"") -> dict[str, bytes]:
        return {participant: note} if participant else {}

    def close(self) -> None:
        pass


def list_checkpoints(model_dir: str) -> list[int]:
    """Steps of the complete checkpoints under `model_dir`, oldest first."""
    from ps.persist.checkpoint import complete_checkpoints

    return [step for step, _path in complete_checkpoints(model_dir)]


class RemoteBackend:
    """PS shards over gRPC: tables and dense parameters (with their optimizer) live on the PS."""

    distributed = True

    def __init__(self, addresses: list[str], ready_timeout_s: float = 60.0,
                 keep_checkpoints: int = DEFAULT_KEEP_CHECKPOINTS, launch_id: str | None = None) -> None:
        from ps.client import PSClient

        # retries back off to 4 s each: 10 of them wait out about 26 s, long enough for a failed shard to
        # be restarted and restore its checkpoint (`--restart-failed`, a Kubernetes restart) mid-step
        self.client = PSClient(addresses, keep_checkpoints=keep_checkpoints, retries=10)
        self.client.wait_until_ready(ready_timeout_s)
        self._dense: DenseVariables | None = None
        # Identifies this launch of the job: the same for every worker, new for every launch. It scopes the
        # barriers and tf.data job names, so nothing left by an earlier launch counts for this one. Without
        # a launcher-given id: shard 0's pid, new whenever the PS processes are.
        self.cluster_id: str | None = launch_id or f"ps-pid-{self.client.health()[0].get('pid', 0)}"

    def create_tables(self, configs: Mapping[str, dict]) -> None:
        if configs:
            self.client.create_tables(configs)

    def lookup(self, ids: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.client.lookup_many(ids, dedupe=False) if ids else {}  # the worker deduplicated them

    def lookup_step(self, ids: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """The rows and the dense values in one Lookup per shard."""
        names = self._dense.names if self._dense is not None and self._dense.variables else []
        if not ids and not names:
            return {}, None
        rows, dense = self.client.lookup_step(ids, names, dedupe=False)  # the worker deduplicated the ids
        return rows, dense if names else None

    def apply_gradients(self, updates: SparseUpdates, global_step: int = 0,
                        learning_rates: Mapping[str, list[float]] | None = None) -> None:
        if updates:
            self.client.apply_gradients_many(updates, global_step=global_step, learning_rates=learning_rates,
                                             dedupe=False)

    def table_sizes(self) -> dict[str, int]:
        return {name: int(t["rows"]) for name, t in self.client.stats()["tables"].items()}

    def create_dense(self, dense: DenseVariables, optimizer: Any | None) -> None:
        self._dense = dense
        if not dense.variables or optimizer is None:
            return
        opt_cfg = keras_optimizer_config(optimizer)
        self.client.create_dense({n: {"shape": list(v.shape), "optimizer": opt_cfg, "initial_value": v.numpy()}
                                  for n, v in zip(dense.names, dense.variables)})

    def pull_dense(self) -> dict[str, np.ndarray] | None:
        if self._dense is None or not self._dense.variables:
            return None
        return self.client.dense_pull(self._dense.names)

    def push_dense(self, grads: list[tf.Tensor], global_step: int, learning_rate: float | None = None) -> None:
        if self._dense is not None and self._dense.variables:
            self.client.dense_push({n: np.asarray(g) for n, g in zip(self._dense.names, grads)},
                                   global_step=global_step, learning_rate=learning_rate)

    def global_step(self) -> int:
        return int(self.client.global_step())

    def claim_global_step(self, limit: int) -> tuple[int, bool]:
        return self.client.claim_global_step(limit)

    def push_step(self, updates: SparseUpdates, dense_grads: list[np.ndarray] | None, global_step: int,
                  learning_rates: Mapping[str, list[float]], limit: int,
                  sole_claimer: bool = False) -> tuple[int, bool]:
        """One ApplyGradients per shard carrying its rows and dense gradients, the claim riding on shard 0's."""
        dense = {}
        if dense_grads is not None and self._dense is not None:
            dense = dict(zip(self._dense.names, dense_grads))
        return self.client.push_step(updates, dense, global_step, limit, learning_rates=learning_rates, dedupe=False,
                                     sole_claimer=sole_claimer)

    def save(self, model_dir: str, step: int, stream_offsets: StreamOffsets | None = None) -> str:
        return self.client.save(model_dir, step, stream_offsets)

    def restore(self, model_dir: str, step: int | None = None) -> int | None:
        if step is None and self.client.latest_checkpoint(model_dir) is None:
            return None
        self.client.restore(model_dir, step)
        return self.global_step()

    def _barrier_name(self, what: str) -> str:
        return f"{self.cluster_id}/{what}"

    def mark_ready(self, note: bytes = b"") -> None:
        """The chief has restored (or found nothing to restore): other workers may start."""
        self.client.barrier(self._barrier_name("chief-ready"), _CHIEF, 1, note)

    def wait_ready(self, timeout_s: float) -> bytes:
        return self.client.wait_barrier_notes(self._barrier_name("chief-ready"), None, [_CHIEF], timeout_s)[_CHIEF]

    def wait_for_workers(self, name: str, worker_index: int, num_workers: int, timeout_s: float,
                         note: bytes = b"") -> dict[str, bytes]:
        participants = [f"worker:{i}" for i in range(num_workers)]
        return self.client.wait_barrier_notes(self._barrier_name(name), participants[worker_index], participants,
                                              timeout_s, note=note)

    def arrive(self, name: str, participant: str | None, expected: int, note: bytes = b"") -> dict[str, bytes]:
        return self.client.barrier_notes(self._barrier_name(name), participant, expected, note)

    def close(self) -> None:
        self.client.close()
