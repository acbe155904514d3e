"""Standalone and distributed SavedModel exporters (the layouts of docs/serving.md).

- Standalone: `<export_base>/<version>/`, the whole model: every table the model reads (hash table + row
  matrix), the dense layers, `serving_default` (serving inputs -> every head), one signature per
  `add_extra_output`, `lookup` and `hashtable_assign`.
- Distributed: `<export_base>/ps_<i>/<version>/` per serving shard (that shard's rows, `lookup`,
  `raw_lookup`, `hashtable_assign`, and a copy of the rows in the PS store's format for `monolith
  serve-ps`), then `<export_base>/entry/<version>/` (the dense model: `embedding_ids`, and each serving
  signature taking the looked-up rows as inputs). The entry is published last, so whoever watches the
  entry directory sees only complete exports.

Version = the export time in seconds, or the checkpoint's global step with `global_step_as_timestamp`.
An existing version directory is never overwritten (the export is skipped). Every directory is written
under a temporary name and renamed into place. Nothing in an export needs this project or a custom op.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf

from ps.store.shard_state import ShardState
from services.export_layout import ASSETS_EXTRA, ENTRY, ENTRY_META, PS_SHARD_DIR, WARMUP_FILE, ps_sub_model
from worker.export import export_context
from worker.export.checkpoint_reader import CheckpointReader
from worker.export.export_context import ExportContext, ExportMode
from worker.export.exported_tables import ServingTable, ServingTables
from worker.export.serving_graph import ID_SPLIT_KEY, IDS_KEY, ROWS_KEY, ServingGraph
from worker.export.warmup import DEFAULT_MAX_RECORDS, gen_prediction_log, write_warmup_file

log = logging.getLogger(__name__)



def _context_signatures(ctx: ExportContext, graph: str) -> dict:
    out = {}
    for sig in ctx.signatures(graph):
        if not callable(sig.outputs):
            log.warning("signature %r of %r holds graph tensors, not a function: TF2 cannot export it", sig.name,
                        graph)
            continue
        specs = {k: tf.TensorSpec(v.shape, v.dtype, name=k) for k, v in sig.inputs.items()}
        out[sig.name] = tf.function(lambda inputs, fn=sig.outputs: fn(**inputs), input_signature=[specs],
                                    autograph=False)
    return out


def _save(root: tf.Module, signatures: dict, final: Path, assets_extra: dict[str, bytes | Path] | None = None) -> Path:
    """Write a SavedModel to a temporary sibling of `final`, add assets.extra, rename into place."""
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        tf.saved_model.save(root, str(tmp), signatures=signatures)
        for rel, content in (assets_extra or {}).items():
            target = tmp / ASSETS_EXTRA / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copytree(content, target) if content.is_dir() else shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


class BaseExporter:
    """Exports the checkpoint under `model_dir` of `model` (a MonolithModel) below `export_dir_base`."""

    mode = ExportMode.NONE

    def __init__(self, model, model_dir: str, export_dir_base: str, *, float16: bool = False,
                 global_step_as_timestamp: bool = False, warmup_file: str | None = None, warmup: bool = True,
                 warmup_records: int = DEFAULT_MAX_RECORDS, model_name: str | None = None) -> None:
        self.model = model
        self.model_dir = model_dir
        self.export_dir_base = Path(export_dir_base)
        self.float16 = float16
        self.global_step_as_timestamp = global_step_as_timestamp
        self.warmup_file = warmup_file
        self.warmup = warmup
        self.warmup_records = warmup_records
        self.model_name = model_name

    def _version(self, checkpoint: CheckpointReader) -> str:
        return str(checkpoint.global_step) if self.global_step_as_timestamp else str(int(time.time()))

    def _rows(self, graph: ServingGraph, checkpoint: CheckpointReader, shard: tuple[int, int] = (0, 1)
              ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(ids, float32 rows) of every table the model reads that serving shard `shard` owns (rounded to
        float16 precision when exporting float16, so every copy of the rows holds the same values)."""
        state = checkpoint.shard(*shard, tables=graph.discovery.tables)
        out = {}
        for t in graph.discovery.tables:
            ids, values = state.table(t).items()
            if self.float16:
                values = values.astype(np.float16).astype(np.float32)
            out[t] = (ids, values)
        return out

    def _tables(self, rows: dict[str, tuple[np.ndarray, np.ndarray]]) -> ServingTables:
        return ServingTables({t: ServingTable(t, ids, values, float16=self.float16)
                              for t, (ids, values) in rows.items()})

    def _warmup_assets(self, graph: ServingGraph, model_name: str) -> dict[str, bytes | Path]:
        """The warmup file: `warmup_file` when it exists, else generated (and written there when given)."""
        if self.warmup_file and Path(self.warmup_file).is_file():
            return {WARMUP_FILE: Path(self.warmup_file)}
        if not self.warmup:
            return {}
        args = [a for a in graph.discovery.parser_args if a.input_name in graph.input_specs]
        if not args:
            log.info("no Monolith parser in the serving input: no warmup requests generated (pass warmup_file)")
            return {}
        parser_args = args[0]
        parser_args.signature_name = graph.signatures()
        target = Path(self.warmup_file) if self.warmup_file else self.export_dir_base / f".warmup-{uuid.uuid4().hex}"
        try:
            write_warmup_file(target, gen_prediction_log(parser_args, model_name, self.warmup_records,
                                                         heads=graph.discovery.heads))
            content = target.read_bytes()
        finally:
            if not self.warmup_file:
                target.unlink(missing_ok=True)
        return {WARMUP_FILE: content}

    def _open(self, checkpoint_path: str | None) -> CheckpointReader:
        step = None
        if checkpoint_path is not None:
            name = Path(checkpoint_path).name
            if not name.startswith("ckpt-") or not name[5:].isdigit():
                raise ValueError(f"checkpoint path must end in ckpt-<step>, got {checkpoint_path!r}")
            step = int(name[5:])
        return CheckpointReader.open(self.model_dir, step)

    def _graph(self, checkpoint: CheckpointReader) -> ServingGraph:
        """The model traced for serving with the checkpoint's dense values (the expensive part: only once the
        version is known to be new)."""
        graph = ServingGraph(self.model, {t: checkpoint.dim(t) for t in checkpoint.tables})
        graph.assign_dense(checkpoint.dense_values())
        log.info("exporting checkpoint %s (global step %d)", checkpoint.path, checkpoint.global_step)
        return graph

    def export_saved_model(self, serving_input_receiver_fn=None, checkpoint_path: str | None = None):
        raise NotImplementedError


class StandaloneExporter(BaseExporter):
    mode = ExportMode.STANDALONE

    def export_saved_model(self, serving_input_receiver_fn=None, checkpoint_path: str | None = None) -> bytes:
        """Export one checkpoint (the latest by default); returns the version directory (bytes, as the seed)."""
        with export_context.enter_export_mode(ExportMode.STANDALONE) as ctx, _without_tf_config():
            checkpoint = self._open(checkpoint_path)
            final = self.export_dir_base / self._version(checkpoint)
            if final.exists():
                log.warning("export %s exists: skipped", final)
                return str(final).encode()
            graph = self._graph(checkpoint)
            root = tf.Module()
            root.tables = self._tables(self._rows(graph, checkpoint))
            root.dense = list(graph.reuse.variables)
            signatures = {name: graph.standalone_function(name, lambda t, ids: root.tables.by_name[t].lookup(ids))
                          for name in graph.signatures()}
            if root.tables.by_name:
                signatures["lookup"] = root.tables.lookup_function()
                signatures["hashtable_assign"] = root.tables.assign_function()
            signatures.update(_context_signatures(ctx, ENTRY))
            _save(root, signatures, final, self._warmup_assets(graph, self.model_name or "default"))
        log.info("standalone export: %s", final)
        return str(final).encode()


class DistributedExporter(BaseExporter):
    mode = ExportMode.DISTRIBUTED

    def __init__(self, model, model_dir: str, export_dir_base: str, *, num_serving_shards: int = 1,
                 with_remote_gpu: bool = False, **kwargs) -> None:
        super().__init__(model, model_dir, export_dir_base, **kwargs)
        if not isinstance(num_serving_shards, int) or num_serving_shards < 1:
            raise ValueError(f"num_serving_shards must be an int >= 1, got {num_serving_shards!r}")
        self.num_serving_shards = num_serving_shards
        self.with_remote_gpu = with_remote_gpu

    def export_saved_model(self, serving_input_receiver_fn=None, checkpoint_path: str | None = None
                           ) -> dict[str, bytes]:
        """Export every serving shard, then the entry; returns {sub-model: version directory}."""
        ctx = ExportContext(with_remote_gpu=self.with_remote_gpu)
        with export_context.enter_export_mode(ExportMode.DISTRIBUTED, ctx), _without_tf_config():
            checkpoint = self._open(checkpoint_path)
            version = self._version(checkpoint)
            entry_final = self.export_dir_base / ENTRY / version
            if entry_final.exists():
                log.warning("export %s exists: skipped", entry_final)
                return {ENTRY: str(entry_final).encode()}
            graph = self._graph(checkpoint)
            out = {}
            m = self.num_serving_shards
            for i in range(m):
                out[ps_sub_model(i)] = str(self._export_shard(ctx, graph, checkpoint, i, version)).encode()
            root = tf.Module()
            root.dense = list(graph.reuse.variables)
            signatures = {"embedding_ids": graph.ids_function()}
            signatures.update({name: graph.entry_function(name) for name in graph.signatures()})
            signatures.update(_context_signatures(ctx, ENTRY))
            meta = {"num_serving_shards": m,
                    "tables": {t: {"dim": graph.table_dims[t]} for t in graph.discovery.tables},
                    "lookup": {"ids": IDS_KEY, "id_split": ID_SPLIT_KEY, "rows": ROWS_KEY},
                    "serving_signatures": graph.signatures(), "inputs": sorted(graph.input_specs),
                    "dense": graph.dense_layout(),
                    "version": version, "global_step": checkpoint.global_step}
            assets: dict[str, bytes | Path] = {ENTRY_META: json.dumps(meta, indent=1).encode()}
            assets.update(self._warmup_assets(graph, self.model_name or ENTRY))
            _save(root, signatures, entry_final, assets)
            out[ENTRY] = str(entry_final).encode()
        log.info("distributed export (version %s, %d serving shards): %s", version, m, self.export_dir_base)
        return out

    def _export_shard(self, ctx: ExportContext, graph: ServingGraph, checkpoint: CheckpointReader, i: int,
                      version: str) -> Path:
        m = self.num_serving_shards
        final = self.export_dir_base / ps_sub_model(i) / version
        if final.exists():
            log.warning("export %s exists: kept", final)
            return final
        rows = self._rows(graph, checkpoint, shard=(i, m))
        root = tf.Module()
        root.tables = self._tables(rows)
        signatures = {"lookup": root.tables.lookup_function(), "raw_lookup": root.tables.raw_lookup_function(),
                      "hashtable_assign": root.tables.assign_function()}
        signatures.update(_context_signatures(ctx, ps_sub_model(i)))
        staging = self.export_dir_base / f".rows-ps_{i}-{uuid.uuid4().hex[:8]}"
        try:
            serving_shard(rows, i, m).save(str(staging), checkpoint.global_step)
            _save(root, signatures, final, {PS_SHARD_DIR: staging})
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final


def serving_table_config(dim: int) -> dict:
    """The store config of a serving copy: rows only (no optimizer state), never trained."""
    return {"dim": int(dim), "initializer": {"type": "zeros"}, "optimizer": {"type": "sgd", "learning_rate": 0.0}}


def serving_shard(rows: dict[str, tuple[np.ndarray, np.ndarray]], index: int, num_shards: int) -> ShardState:
    """The store of serving PS shard `index` of `num_shards` holding `rows`: saved with `ShardState.save` into
    the export, restored by `monolith serve-ps` with `ShardState.restore_own_part`."""
    state = ShardState(index, num_shards)
    for t, (ids, values) in rows.items():
        table, _ = state.create_table(t, serving_table_config(values.shape[1]))
        if ids.size:
            table.assign(ids, values)
    return state


class _without_tf_config:
    """TF_CONFIG is removed while exporting (as in the original), so nothing tries to join a cluster."""

    def __enter__(self):
        self._saved = os.environ.pop("TF_CONFIG", None)

    def __exit__(self, *exc):
        if self._saved is not None:
            os.environ["TF_CONFIG"] = self._saved
