"""Where parameters live: in this process (local mode) or on PS shards over gRPC (distributed mode).

Both backends expose the same small surface to the training loop: create tables, look rows up, push
summed sparse gradients, create/pull/push dense parameters, the global step, and checkpoints.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

import numpy as np
import tensorflow as tf

from worker.entry import keras_optimizer_config

log = logging.getLogger(__name__)

_CHIEF = "worker:0"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DenseVariables:
    """The model's dense tf.Variables, named by creation order so every worker agrees on the names."""

    def __init__(self, variables: list[tf.Variable]) -> None:
        self.variables = variables
        self.names = [f"dense_{i:04d}" for i in range(len(variables))]

    @tf.function
    def _assign(self, values):
        for var, value in zip(self.variables, values):
            var.assign(value)

    def assign(self, values: dict[str, np.ndarray]) -> None:
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(f"dense values lack {missing}")
        if self.variables:
            self._assign([tf.convert_to_tensor(values[n]) for n in self.names])


class LocalBackend:
    """In-process embedding store + local Keras optimizer for the dense parameters."""

    distributed = False

    def __init__(self) -> None:
        self.tables: dict[str, Any] = {}
        self._global_step = 0
        self._dense: DenseVariables | None = None
        self._optimizer = None
        self._apply_fn = None

    # sparse
    def create_tables(self, configs: dict[str, dict]) -> None:
        from ps.table import EmbeddingTable

        for name, cfg in configs.items():
            if name not in self.tables:
                self.tables[name] = EmbeddingTable.from_dict(cfg)

    def lookup(self, ids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: self._table(name).lookup(v) for name, v in ids.items()}

    def apply_gradients(self, updates: dict[str, tuple[np.ndarray, np.ndarray]], global_step: int = 0,
                        learning_rates: dict[str, list[float]] | None = None) -> None:
        for name, (ids, grads) in updates.items():
            lrs = (learning_rates or {}).get(name)
            self._table(name).apply_gradients(ids, grads, global_step=global_step, learning_rates=lrs)

    def _table(self, name: str):
        try:
            return self.tables[name]
        except KeyError:
            raise ValueError(f"unknown table {name!r}; tables are {sorted(self.tables)}") from None

    def table_sizes(self) -> dict[str, int]:
        return {name: int(t.size) if not callable(t.size) else int(t.size()) for name, t in self.tables.items()}

    # dense
    def create_dense(self, dense: DenseVariables, optimizer) -> None:
        """`optimizer` None: variables only (eval/predict); later called again with the train optimizer."""
        self._dense, self._optimizer = dense, optimizer
        if dense.variables and optimizer is not None:
            optimizer.build(dense.variables)

            @tf.function(input_signature=[tf.TensorSpec(v.shape, v.dtype) for v in dense.variables])
            def apply(*grads):
                optimizer.apply_gradients(zip(grads, dense.variables))

            self._apply_fn = apply.get_concrete_function()

    def pull_dense(self) -> dict[str, np.ndarray] | None:
        return None

    def push_dense(self, grads: list[tf.Tensor], global_step: int, learning_rate: float | None = None) -> None:
        if self._apply_fn is not None:
            self._apply_fn(*grads)

    # global step
    def global_step(self) -> int:
        return self._global_step

    def claim_global_step(self, limit: int) -> tuple[int, bool]:
        """(global step, claimed): add 1 unless that would pass `limit`."""
        if self._global_step >= limit:
            return self._global_step, False
        self._global_step += 1
        return self._global_step, True

    # checkpoints: <model_dir>/ckpt-<step>/{tables/<name>/, dense.npz, state.json}
    def save(self, model_dir: str, step: int, keep: int) -> str:
        os.makedirs(model_dir, exist_ok=True)
        final = os.path.join(model_dir, f"ckpt-{step}")
        tmp = tempfile.mkdtemp(prefix=f".ckpt-{step}.", dir=model_dir)
        try:
            for name, table in self.tables.items():
                table.save(os.path.join(tmp, "tables", name))
            arrays = {}
            if self._dense is not None:
                arrays.update({n: v.numpy() for n, v in zip(self._dense.names, self._dense.variables)})
                if self._optimizer is not None:
                    arrays.update({f"opt_{i:04d}": np.asarray(v.numpy()) for i, v in
                                   enumerate(self._optimizer.variables)})
            with open(os.path.join(tmp, "dense.npz"), "wb") as fh:
                np.savez(fh, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            with open(os.path.join(tmp, "state.json"), "w") as fh:
                json.dump({"global_step": step, "tables": sorted(self.tables)}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(model_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in list_checkpoints(model_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(os.path.join(model_dir, f"ckpt-{old}"), ignore_errors=True)
        return final

    def restore(self, model_dir: str, step: int | None = None) -> int | None:
        from ps.table import EmbeddingTable

        steps = list_checkpoints(model_dir)
        if not steps:
            return None
        step = steps[-1] if step is None else step
        path = os.path.join(model_dir, f"ckpt-{step}")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"no checkpoint for step {step} under {model_dir!r} (have {steps})")
        with open(os.path.join(path, "state.json")) as fh:
            state = json.load(fh)
        for name in state["tables"]:
            self.tables[name] = EmbeddingTable.load(os.path.join(path, "tables", name))
        with np.load(os.path.join(path, "dense.npz")) as data:
            if self._dense is not None:
                self._dense.assign({n: data[n] for n in self._dense.names if n in data})
                if self._optimizer is not None:
                    for i, var in enumerate(self._optimizer.variables):
                        key = f"opt_{i:04d}"
                        if key not in data:
                            raise ValueError(f"checkpoint {path!r} lacks optimizer variable {key}")
                        var.assign(data[key])
        self._global_step = int(state["global_step"])
        return self._global_step

    def mark_ready(self) -> None:
        pass

    def wait_ready(self, timeout_s: float) -> None:
        pass

    def wait_for_workers(self, name: str, worker_index: int, num_workers: int, timeout_s: float) -> None:
        pass

    def close(self) -> None:
        pass


def list_checkpoints(model_dir: str) -> list[int]:
    """Complete local checkpoints (`ckpt-<step>` directories; temp dirs start with '.'), oldest first."""
    if not os.path.isdir(model_dir):
        return []
    steps = []
    for name in os.listdir(model_dir):
        if name.startswith("ckpt-") and name[5:].isdigit():
            steps.append(int(name[5:]))
    return sorted(steps)


class RemoteBackend:
    """PS shards over gRPC: tables and dense parameters (with their optimizer) live on the PS."""

    distributed = True

    def __init__(self, addresses: list[str], ready_timeout_s: float = 60.0, keep_checkpoints: int = 5,
                 launch_id: str | None = None) -> None:
        from services.ps_client import PSClient

        self.client = PSClient(addresses, keep_checkpoints=keep_checkpoints)
        self.client.wait_until_ready(ready_timeout_s)
        self._dense: DenseVariables | None = None
        # Identifies this launch of the job: the same for every worker, new for every launch. It scopes the
        # barriers and tf.data job names, so nothing left by an earlier launch counts for this one. Without
        # a launcher-given id: shard 0's pid, new whenever the PS processes are.
        self.cluster_id = launch_id or f"ps-pid-{self.client.health()[0].get('pid', 0)}"

    def create_tables(self, configs: dict[str, dict]) -> None:
        if configs:
            self.client.create_tables(configs)

    def lookup(self, ids: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.client.lookup_many(ids) if ids else {}

    def apply_gradients(self, updates, global_step: int = 0, learning_rates=None) -> None:
        if updates:
            self.client.apply_gradients_many(updates, global_step=global_step, learning_rates=learning_rates)

    def table_sizes(self) -> dict[str, int]:
        return {name: int(t["rows"]) for name, t in self.client.stats()["tables"].items()}

    def create_dense(self, dense: DenseVariables, optimizer) -> None:
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

    def save(self, model_dir: str, step: int, keep: int) -> str:
        return self.client.save(model_dir, step)

    def restore(self, model_dir: str, step: int | None = None) -> int | None:
        if step is None and self.client.latest_checkpoint(model_dir) is None:
            return None
        self.client.restore(model_dir, step)
        return self.global_step()

    def _barrier_name(self, what: str) -> str:
        return f"{self.cluster_id}/{what}"

    def mark_ready(self) -> None:
        """The chief has restored (or found nothing to restore): other workers may start."""
        self.client.barrier(self._barrier_name("chief-ready"), _CHIEF, 1)

    def wait_ready(self, timeout_s: float) -> None:
        self.client.wait_barrier(self._barrier_name("chief-ready"), None, [_CHIEF], timeout_s)

    def wait_for_workers(self, name: str, worker_index: int, num_workers: int, timeout_s: float) -> None:
        """Arrive at this launch's barrier `name` and wait (bounded) until every worker has."""
        participants = [f"worker:{i}" for i in range(num_workers)]
        self.client.wait_barrier(self._barrier_name(name), participants[worker_index], participants, timeout_s)

    def close(self) -> None:
        self.client.close()
