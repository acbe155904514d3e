"""The worker loop: train / evaluate / predict a `MonolithModel`, locally or against PS shards.

One step: read a batch -> dedupe each table's ids once -> look rows (and, with PS shards, the dense values)
up through the `ParameterBackend` (on a prefetch thread, bounded by `staleness`) -> one traced
`tf.function` (fixed input signature) computing loss, dense gradients and row gradients -> claim a global
step and, only if granted, apply the row gradients with each segment's learning rate and the dense
gradients (the in-graph optimizer locally; with PS shards one call per shard carries both).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from ps.errors import PSUnavailable
from worker.modeling import stream_source
from worker.modeling.estimator_spec import ModeKeys
from worker.modeling.feature import FeatureSlot
from worker.modeling.hooks.base import StepContext, StepResult
from worker.modeling.lookup_inputs import LookupInputs, lookup_inputs
from worker.modeling.task_context import NativeTaskContext, with_ctx
from worker.runtime import evaluation
from worker.runtime.backends import LocalBackend, ParameterBackend, RemoteBackend
from worker.runtime.batch_prefetch import NoBatchYet, Prefetcher
from worker.runtime.batch_prep import BatchPreparer, PreparedBatch, flat_reader, unpack_step_inputs
from worker.runtime.dense_state import DenseVariables
from worker.runtime.flat_calls import call_flat
from worker.runtime.gradient_pusher import GradientPusher
from worker.runtime.prediction_writer import PredictionWriter
from worker.runtime.run_config import RunConfig
from worker.runtime.step_timing import StepTimeExporter, StepTimes, now
from worker.runtime.stream_checkpoints import StreamCheckpoints, restore_for_stream
from worker.runtime.variable_reuse import VariableReuse

log = logging.getLogger(__name__)


def _relax_batch(spec):
    if isinstance(spec, tf.RaggedTensorSpec):
        return tf.RaggedTensorSpec([None] + spec.shape[1:].as_list(), spec.dtype, spec.ragged_rank,
                                   spec.row_splits_dtype)
    if isinstance(spec, tf.TensorSpec):
        shape = spec.shape.as_list() if spec.shape.rank is not None else None
        return tf.TensorSpec([None] + shape[1:] if shape else shape, spec.dtype)
    raise ValueError(f"unsupported feature spec {spec!r}: features must be tensors or ragged tensors")


@contextlib.contextmanager
def params_mode(model, mode: str):
    """While the model's functions run for EVAL, `p.mode` is EVAL, so `self.batch_size` is the eval one."""
    params = model.p
    saved = params.mode
    params.mode = ModeKeys.EVAL if mode == ModeKeys.EVAL else saved
    try:
        yield
    finally:
        params.mode = saved


def step_signature(spec: dict) -> tuple[list[str], dict, dict, dict]:
    """A model's inputs for a dataset's `element_spec`: the sparse (ragged int64) features, then the specs of
    the features (any batch size), of each sparse feature's looked-up rows and of its id index. The training
    step packs the rows and indices into one tensor each (`BatchPreparer.step_inputs`); the model dump keeps
    them per feature."""
    sparse = sorted(k for k, v in spec.items() if isinstance(v, tf.RaggedTensorSpec))
    for k in sparse:
        v = spec[k]
        if v.dtype != tf.int64 or v.ragged_rank != 1:
            raise ValueError(f"sparse feature {k!r} must be a ragged int64 [batch, None] tensor, got {v!r}")
    feature_sig = {k: _relax_batch(v) for k, v in spec.items()}
    rows_sig = {f: tf.TensorSpec([None, None], tf.float32) for f in sparse}
    index_sig = {f: tf.TensorSpec([None], tf.int32) for f in sparse}
    return sparse, feature_sig, rows_sig, index_sig


@dataclass
class _Compiled:
    mode: str
    fn: Any
    prep: BatchPreparer
    heads: list[str]
    classification: list[bool]
    optimizer: Any
    slots: dict[str, FeatureSlot]  # the tables this mode pushes to: their segments' learning rates
    dense_inputs: bool = False     # `fn` takes the dense values after the step's inputs and assigns them first


UNBOUNDED = 2**62
"""The step limit of `train(None)`: never reached."""

_STREAM_WAIT_S = 0.2
"""How often a worker waiting for a quiet stream's next batch looks for checkpoint work."""

_WINDOW = 50
"""Steps whose outputs the progress report's AUC/MSE is computed over."""


@dataclass
class _TrainRun:
    """The state of one `train` call's loop."""

    step: int
    last_save_step: int
    last_save_time: float
    bar: Any = None  # tqdm progress bar
    started: float = field(default_factory=time.perf_counter)
    examples: int = 0
    steps_run: int = 0
    loss: float = float("nan")
    window: deque = field(default_factory=lambda: deque(maxlen=_WINDOW))
    times: StepTimes = field(default_factory=StepTimes)
    first_step: tuple | None = None  # (time, examples, step times) when the first step ended: steady-state rates


def _step_outputs(out, mode: str) -> dict[str, Any]:
    """What a traced step returns besides gradients: head predictions (and labels), extra outputs, the loss."""
    fetches = {h: tf.identity(p) for h, p in zip(out.head_names, out.preds)}
    if mode != ModeKeys.PREDICT:
        fetches.update({f"label:{h}": tf.identity(lb) for h, lb in zip(out.head_names, out.labels)})
    fetches.update({name: v for name, v in out.extra_outputs.items() if isinstance(v, tf.Tensor)})
    result: dict[str, Any] = {"fetches": fetches}
    if mode != ModeKeys.PREDICT:
        result["loss"] = tf.cast(out.loss, tf.float32)
    return result


class Estimator:
    """`Estimator(model, RunConfig(...)).train(max_steps)`, `.evaluate()`, `.predict()`."""

    def __init__(self, model, config: RunConfig, hooks=()) -> None:
        self.model = model
        self.config = config
        self.hooks = list(hooks)
        self._reuse = VariableReuse()
        self._compiled: dict[str, _Compiled] = {}
        self._tables_created = False
        self._dense: DenseVariables | None = None
        self._restored: int | None = None
        self._restore_checked = False
        self.backend: ParameterBackend = (
            RemoteBackend(config.ps_addresses, config.ready_timeout_s, config.keep_checkpoint_max, config.launch_id)
            if config.ps_addresses is not None else LocalBackend(config.keep_checkpoint_max))
        self._refused = [0, 0]
        self._jobs = 0
        self.model.ctx.feature_factory.backend = self.backend  # for the model API (ctx.apply_embedding_gradients)
        self.task_ctx = NativeTaskContext(num_ps=len(config.ps_addresses or []), ps_index=0,
                                          num_workers=config.num_workers, worker_index=config.worker_index,
                                          model_name=type(model).__name__, sync_backend=None, server_type="worker")
        self.last_train_stats: dict[str, Any] = {}
        self._step_times: StepTimeExporter | None = None
        if config.export_step_times:
            from services.metrics import get_cli

            self._step_times = StepTimeExporter(get_cli(), os.path.join(config.model_dir, "train"),
                                                {"worker": str(config.worker_index)})
        self.last_checkpoint: str | None = None
        # called as listener.after_save(global_step, checkpoint_path) after every checkpoint (e.g. exporters)
        self.checkpoint_listeners: list = []
        self._source: stream_source.StreamSource | None = None  # the TRAIN input's, when it is a stream
        self._stream: StreamCheckpoints | None = None
        self._stream_start: stream_source.Offsets | None = None

    # --- building ----------------------------------------------------------------------------------
    def _params_mode(self, mode: str):
        return params_mode(self.model, mode)

    def _dataset(self, mode: str) -> tf.data.Dataset:
        with with_ctx(self.task_ctx), self._params_mode(mode), stream_source.collect() as sources:
            ds = self.model.create_input_fn(mode)()
        if not isinstance(ds, tf.data.Dataset):
            raise ValueError(f"input_fn({mode!r}) must return a tf.data.Dataset, got {type(ds).__name__}")
        if not isinstance(ds.element_spec, dict):
            raise ValueError(f"input_fn({mode!r}) must yield dicts of features, got {ds.element_spec!r}")
        if sources:
            self._check_stream(mode, sources, ds)
            self._source = sources[0]
        return ds

    def _check_stream(self, mode: str, sources: list, ds: tf.data.Dataset) -> None:
        if mode != ModeKeys.TRAIN or len(sources) != 1:
            raise ValueError(f"input_fn({mode!r}) created {len(sources)} stream inputs: a stream (Kafka) input is "
                             f"for training, one per input_fn")
        if ds.element_spec.get(stream_source.STREAM_BATCH_KEY) != tf.TensorSpec([], tf.int64):
            raise ValueError(f"input_fn's stream batches lost their {stream_source.STREAM_BATCH_KEY!r} scalar: do not "
                             f"re-batch, unbatch or rebuild the feature dicts of a stream input")
        if self.config.dispatcher:
            raise ValueError("a stream input is read by the workers themselves: it cannot go through the tf.data "
                             "service (drop --dispatcher)")
        if self._stream is not None:
            raise ValueError("the stream input has already been read by an earlier train() of this Estimator: "
                             "build a new Estimator (a new process) to train from it again")

    def _distribute(self, ds: tf.data.Dataset, mode: str) -> tf.data.Dataset:
        """This worker's share of the input: from the tf.data service, or every num_workers-th batch."""
        if self.config.dispatcher:
            self._jobs += 1
            job = self.config.job_name or self._job_name(mode)
            log.info("reading %s input from the tf.data service %s, job %s", mode, self.config.dispatcher, job)
            return ds.apply(tf.data.experimental.service.distribute(
                processing_mode="distributed_epoch", service=self.config.dispatcher, job_name=job))
        if self.config.num_workers > 1:
            return ds.shard(self.config.num_workers, self.config.worker_index)
        return ds

    def _job_name(self, mode: str) -> str:
        """The same on every worker of this run, new for every run (a finished job name yields nothing)."""
        digest = hashlib.md5(self.config.model_dir.encode()).hexdigest()[:10]
        run = getattr(self.backend, "cluster_id", None) or f"{os.getpid()}"
        return f"{type(self.model).__name__}-{digest}-{run}-{mode}-{self._jobs}"

    def _compile(self, mode: str, dataset: tf.data.Dataset) -> _Compiled:
        if mode in self._compiled:
            return self._compiled[mode]
        spec = {k: v for k, v in dataset.element_spec.items() if k != stream_source.STREAM_BATCH_KEY}
        sparse, feature_sig, _, _ = step_signature(spec)
        packed_sig = (tf.TensorSpec([None], tf.float32), tf.TensorSpec([len(sparse), 3], tf.int32),
                      tf.TensorSpec([None], tf.int32))  # rows, layout, index: BatchPreparer.step_inputs
        model_fn = self.model.create_model_fn()
        model = self.model
        clip_norm, weight_decay = float(model.clip_norm), float(model.dense_weight_decay or 0.0)
        meta: dict[str, Any] = {}

        def step(features, packed_rows, layout, packed_index):
            with tf.GradientTape() as tape:
                tape.watch(packed_rows)
                rows, index = unpack_step_inputs(sparse, packed_rows, layout, packed_index)
                inputs = LookupInputs(rows, index, {f: features[f].row_splits for f in sparse})
                with (self._params_mode(mode), self._reuse.scope(), lookup_inputs(inputs),
                      with_ctx(self.task_ctx)):
                    out = model_fn(features, ModeKeys.PREDICT if mode == ModeKeys.PREDICT else ModeKeys.TRAIN)
            meta.update(out=out, used=sorted(inputs.used))
            result = _step_outputs(out, mode)
            if mode == ModeKeys.TRAIN:
                dense = self._reuse.trainable
                # one packed gradient for every feature's rows (unused features' blocks are empty)
                grads = tape.gradient(out.loss, [*dense, packed_rows],
                                      unconnected_gradients=tf.UnconnectedGradients.ZERO)
                grads, _ = tf.clip_by_global_norm([tf.convert_to_tensor(g) for g in grads], clip_norm)
                dense_grads = grads[:len(dense)]
                if weight_decay:
                    dense_grads = [g + weight_decay * v for g, v in zip(dense_grads, dense)]
                result["dense_grads"] = dense_grads
                result["emb_grads"] = grads[-1]
            return result

        # A flat signature: binding many nested (ragged) arguments per call cost more than the step's compute
        # (docs/design-notes.md).
        structure = (feature_sig, *packed_sig)
        signature = tf.nest.flatten(structure, expand_composites=True)

        def flat_step(*flat):
            return step(*tf.nest.pack_sequence_as(structure, list(flat), expand_composites=True))

        concrete = tf.function(flat_step, input_signature=signature, autograph=False).get_concrete_function()
        out = meta["out"]
        self._create_tables()
        fc_dict = self.model.fc_dict
        feature_tables = {f: fc_dict[f].slot.name for f in meta["used"]}
        slots = {t: self.model.ctx.feature_factory.slots[t] for t in feature_tables.values()}
        counting = frozenset(t for t, slot in slots.items() if slot.config.occurrence_threshold > 0)
        compiled = _Compiled(mode, concrete, BatchPreparer(sparse, feature_tables, counting, spec), out.head_names,
                             out.classification, out.optimizer, slots)
        self._attach_dense(compiled)
        if mode == ModeKeys.TRAIN:
            compiled.fn = self._train_function(concrete, signature, compiled)
        self._compiled[mode] = compiled
        return compiled

    def _train_function(self, step: Any, signature: list, compiled: _Compiled) -> Any:
        """The traced train step as the loop calls it. Locally the dense optimizer runs inside it (one call
        per step, no dense gradients leave the graph); with PS shards the dense gradients leave it packed
        into one tensor (`dense_grads`, split again by `_push_dense`)."""
        variables = self._reuse.trainable
        optimizer = compiled.optimizer
        local = not self.config.distributed and bool(variables)
        # with PS shards the step's dense values (read with its rows) are assigned in the same call: a second
        # call of a traced function per step costs a hand-off to TensorFlow's threads and back
        compiled.dense_inputs = self.config.distributed and bool(variables)
        n = len(signature)

        def train_step(*flat):
            for var, value in zip(variables, flat[n:]):  # stateful ops run in program order: before the step
                var.assign(value)
            result = dict(step(*flat[:n]))
            grads = result.pop("dense_grads")
            if local:
                optimizer.apply_gradients(zip(grads, variables))
            elif grads:
                result["dense_grads"] = tf.concat([tf.reshape(g, [-1]) for g in grads], 0)
            return result

        if compiled.dense_inputs:
            signature = [*signature, *(tf.TensorSpec(v.shape, v.dtype) for v in variables)]
        return tf.function(train_step, input_signature=signature, autograph=False).get_concrete_function()

    def _create_tables(self) -> None:
        factory = self.model.ctx.feature_factory
        if self._tables_created:
            new = [n for n, s in factory.slots.items() if s.slices and not s.frozen]
            if new:
                raise ValueError(f"tables {new} were declared after the tables were created; declare every "
                                 f"embedding in the first traced mode")
            return
        self.backend.create_tables(factory.table_configs())
        for slot in factory.slots.values():
            slot.frozen = True
        self._tables_created = True

    def _attach_dense(self, compiled: _Compiled) -> None:
        """Hand the dense variables to the backend; the dense optimizer comes with the first TRAIN trace."""
        trainable = self._reuse.trainable
        if self._dense is None:
            self._dense = DenseVariables(trainable)
            self.backend.create_dense(self._dense, None)
        elif len(trainable) != len(self._dense.variables):
            raise ValueError(f"mode {compiled.mode!r} created {len(trainable)} dense variables, the first traced "
                             f"mode {len(self._dense.variables)}: create every layer in every mode")
        if compiled.mode == ModeKeys.TRAIN:
            if compiled.optimizer is None and trainable:
                raise ValueError(
                    f"model_fn's EstimatorSpec has no optimizer, but the model has {len(trainable)} dense variables "
                    f"to train: pass one, e.g. EstimatorSpec(..., optimizer=tf.keras.optimizers.Adagrad(0.01)) "
                    f"(there is no default; embedding slices use their own optimizers, docs/defaults.md)")
            self.backend.create_dense(self._dense, compiled.optimizer)

    def _maybe_restore(self) -> int:
        """The chief (or a local worker) restores the latest checkpoint once; other workers wait for it."""
        if not self._restore_checked:
            self._restore_checked = True
            if self._source is not None:
                self._stream_start = restore_for_stream(self.backend, self.config)
            elif self.config.is_chief:
                if self.backend.global_step() == 0:
                    self._restored = self.backend.restore(self.config.model_dir)
                    if self._restored is not None:
                        log.info("restored checkpoint at global step %d from %s", self._restored,
                                 self.config.model_dir)
                self.backend.mark_ready()
            elif self.backend.global_step() == 0:
                # a global step above 0 means the job is under way (or its shards restored a checkpoint): the
                # chief restores only at 0, so there is nothing to wait for, and a restarted shard 0 no
                # longer remembers the chief's arrival
                self.backend.wait_ready(max(self.config.ready_timeout_s, 300.0))
        return self.backend.global_step()

    # --- running -----------------------------------------------------------------------------------
    def _prefetcher(self, compiled: _Compiled, dataset: tf.data.Dataset, staleness: int,
                    times: StepTimes | None = None) -> Prefetcher:
        stream = stream_source.STREAM_BATCH_KEY in dataset.element_spec
        next_batch = flat_reader(dataset, stream_source.STREAM_BATCH_KEY)
        backend = self.backend
        times = times or StepTimes()

        def read() -> PreparedBatch:
            t = now()
            flat = next_batch()
            seq = flat[-1] if stream else None
            t = times.add("input", t)
            batch = compiled.prep.dedupe(flat[:-1] if stream else flat)
            batch.stream_seq = None if seq is None else int(seq)
            times.add("dedupe", t)
            return batch

        def lookup(batch: PreparedBatch) -> PreparedBatch:
            t = now()
            rows, batch.dense = backend.lookup_step(batch.table_ids)  # remote: rows and dense values, one call
            compiled.prep.assemble(batch, rows)
            self._stage(compiled, batch)
            times.add("lookup", t)
            return batch

        return Prefetcher(read, lookup, staleness, lookup_on_get=not self.config.distributed)

    def _stage(self, compiled: _Compiled, batch: PreparedBatch) -> list:
        """The step's input tensors and dense values as tensors, built where the batch is looked up: on the
        prefetch thread with PS shards, so the training thread only assigns and calls."""
        rows, batch.layout, index = compiled.prep.step_inputs(batch)
        flat = batch.features
        if isinstance(flat, dict):
            flat = tf.nest.flatten(flat, expand_composites=True)
        batch.args = [*flat, *map(tf.convert_to_tensor, (rows, batch.layout, index))]
        if batch.dense is not None and self._dense is not None:
            batch.dense_args = self._dense.tensors(batch.dense)
        return batch.args

    def _run_step(self, compiled: _Compiled, batch: PreparedBatch) -> dict[str, Any]:
        args = batch.args if batch.args is not None else self._stage(compiled, batch)
        if compiled.dense_inputs:
            if batch.dense_args is None:
                raise ValueError("a training step with PS shards got no dense values from its lookup")
            return call_flat(compiled.fn, [*args, *batch.dense_args])
        if batch.dense_args is not None and self._dense is not None:
            self._dense.assign_tensors(batch.dense_args)
        return call_flat(compiled.fn, args)

    def train(self, max_steps: int | None) -> dict[str, Any]:
        """Train until the global step reaches `max_steps` or the input ends; `max_steps=None`: no step limit
        (an unbounded stream trains until the process is stopped)."""
        if max_steps is None:
            max_steps = UNBOUNDED
        if not isinstance(max_steps, int) or max_steps < 0:
            raise ValueError(f"max_steps must be an int >= 0 or None, got {max_steps!r}")
        dataset = self._dataset(ModeKeys.TRAIN)
        compiled = self._compile(ModeKeys.TRAIN, dataset)
        step = self._maybe_restore()
        if step >= max_steps:
            log.info("training from global step %d to %d: nothing left to train", step, max_steps)
            step = self._all_workers_done(max_steps, step)
            return {"global_step": step, "steps": 0, "examples": 0}
        if self._source is not None:
            self._stream = StreamCheckpoints(self._source, self.backend, self.config)
            self._stream.start(self._stream_start, max(self.config.ready_timeout_s, 120.0))
            log.info("training from global step %d to %s (stream input)", step,
                     "no step limit" if max_steps >= UNBOUNDED else max_steps)
        else:
            dataset = self._distribute(dataset, ModeKeys.TRAIN)
            skip = step // self.config.num_workers
            if skip and not self.config.dispatcher:
                dataset = dataset.skip(skip)  # a restarted worker resumes about where its input was
            log.info("training from global step %d to %d (input skips %d batches)", step, max_steps,
                     0 if self.config.dispatcher else skip)
        hooks = self.hooks + list(self.model._training_hooks)
        cfg = self.config
        run = _TrainRun(step=step, last_save_step=step, last_save_time=time.monotonic(),
                        bar=self._progress(max_steps, step) if cfg.progress else None)
        prefetcher = self._prefetcher(compiled, dataset, cfg.staleness, run.times)
        pusher = GradientPusher(lambda batch, out, at: self._push(compiled, batch, out, at, max_steps, run.times),
                                prefetcher.done, asynchronous=cfg.distributed, max_inflight=cfg.staleness + 1,
                                start_step=step)
        self._refused = [0, 0]  # steps (and their examples) computed after the job's last step was claimed
        for hook in hooks:
            hook.begin()
        try:
            while run.step < max_steps and self._train_step(compiled, run, hooks, prefetcher, pusher, max_steps):
                pass
            run.step = pusher.drain()
        finally:
            pusher.close()
            prefetcher.close()
            if run.bar is not None:
                run.bar.close()
            for hook in hooks:
                hook.end()
        return self._finish_training(run, max_steps)

    def _train_step(self, compiled: _Compiled, run: _TrainRun, hooks: list, prefetcher: Prefetcher,
                    pusher: GradientPusher, max_steps: int) -> bool:
        """One step: hooks, batch, compute, push, report, periodic save. False when the input is exhausted."""
        cfg = self.config
        times = run.times
        started = t = now()
        ctx = StepContext(global_step=run.step, mode=ModeKeys.TRAIN)
        wanted = [name for hook in hooks for name in (hook.before_step(ctx) or [])]
        t = times.add("hooks", t)
        batch = prefetcher.get() if self._stream is None else self._next_stream_batch(run, prefetcher, pusher)
        if batch is None:
            log.info("input exhausted at global step %d", run.step)
            return False
        t = times.add("lookup_wait", t)
        out = self._run_step(compiled, batch)
        run.loss = float(out["loss"])
        if not np.isfinite(run.loss):
            raise FloatingPointError(f"loss is {run.loss} at global step {run.step}")
        t = times.add("compute", t)
        pusher.submit(batch, out, run.step)
        t = times.add("push_wait", t) if cfg.distributed else now()  # local pushes ran here and timed themselves
        run.step = pusher.step_estimate
        run.examples += batch.batch_size
        run.steps_run += 1
        fetches = self._fetch(out, wanted)
        if run.bar is not None or -run.steps_run % cfg.log_step_count_steps < _WINDOW:
            run.window.append({k: v.numpy() for k, v in out["fetches"].items()})
        result = StepResult(global_step=run.step, loss=run.loss, batch_size=batch.batch_size, fetches=fetches)
        for hook in hooks:
            hook.after_step(ctx, result)
        if run.bar is not None:
            run.bar.update(1)
        if run.steps_run % cfg.log_step_count_steps == 0 or run.bar is not None and run.steps_run % 10 == 0:
            self._report(run, compiled)
        times.add("hooks", t)
        if run.first_step is None:  # steady-state rates start once the first step's updates have all landed
            run.step = pusher.drain()
        times.steps += 1
        t = now()
        times.total += t - started
        if run.first_step is None:
            run.first_step = (t, run.examples, times.snapshot())
        if cfg.is_chief and run.step < max_steps and self._save_due(run.step, run.last_save_step, run.last_save_time):
            self._periodic_save(run, pusher)
        elif self._stream is not None:
            self._stream.serve_round(pusher.drain)
        return True

    def _periodic_save(self, run: _TrainRun, pusher: GradientPusher) -> None:
        if self._stream is not None:
            run.step = self._stream.checkpoint(pusher.drain, self._save_at)
        else:
            run.step = pusher.drain()
            try:
                self.save(run.step)
            except PSUnavailable as exc:  # a shard is down (and restarting): the next periodic save will do
                log.warning("checkpoint at global step %d skipped: %s", run.step, exc)
        run.last_save_step, run.last_save_time = run.step, time.monotonic()

    def _next_stream_batch(self, run: _TrainRun, prefetcher: Prefetcher, pusher: GradientPusher):
        """A stream can be quiet for long: while this worker waits for its next batch, the chief still
        checkpoints on time (when the job trained since its last one) and the others answer its rounds."""
        assert self._stream is not None
        while True:
            try:
                return prefetcher.get(timeout=_STREAM_WAIT_S)
            except NoBatchYet:
                pass
            if not self.config.is_chief:
                self._stream.serve_round(pusher.drain)
            elif self._save_due(run.step, run.last_save_step, run.last_save_time):
                if self.backend.global_step() > run.last_save_step:
                    self._periodic_save(run, pusher)
                else:
                    run.last_save_time = time.monotonic()

    def _finish_training(self, run: _TrainRun, max_steps: int) -> dict[str, Any]:
        cfg = self.config
        step = self._all_workers_done(max_steps, run.step)
        # with several workers the last save may predate another worker's last push: save the final state
        if (cfg.is_chief and (cfg.save_checkpoints_steps or cfg.save_checkpoints_secs)
                and (step != run.last_save_step or cfg.num_workers > 1 or self._stream is not None)):
            self.save(step)
        elapsed = time.perf_counter() - run.started
        if self._step_times is not None:
            self._step_times.export(run.times, step)
        steps_run, examples = run.steps_run - self._refused[0], run.examples - self._refused[1]
        self.last_train_stats = {"global_step": step, "steps": steps_run, "examples": examples,
                                 "seconds": elapsed, "examples_per_sec": examples / elapsed if elapsed else 0.0,
                                 "loss": run.loss}
        if run.first_step is not None and steps_run > 1:  # after the first step: input set up, caches warm
            first_time, first_examples, first_times = run.first_step
            self.last_train_stats.update(
                steady_examples_per_sec=(examples - first_examples) / max(time.perf_counter() - first_time, 1e-9),
                step_ms=run.times.ms_per_step(first_times))
        return self.last_train_stats

    def _all_workers_done(self, max_steps: int, step: int) -> int:
        """Several workers on PS shards: meet at this launch's end-of-training barrier (bounded wait), so the
        chief's final save, evaluation and summary see every worker's last push. Returns the global step then.

        `train(0)` only builds and restores: nobody waits for it. If a worker never arrives the chief still
        saves what the others trained, then raises the timeout naming the missing workers."""
        cfg = self.config
        if self._stream is not None and max_steps > 0:
            self._stream.finish(f"train-done/{max_steps}")
            return self.backend.global_step()
        if not cfg.distributed or cfg.num_workers == 1 or max_steps == 0:
            return step
        try:
            self.backend.wait_for_workers(f"train-done/{max_steps}", cfg.worker_index, cfg.num_workers,
                                          cfg.barrier_timeout_s)
        except TimeoutError as exc:
            if cfg.is_chief:
                log.error("%s; saving the state as it is before giving up", exc)
                self.save()
            raise
        step = self.backend.global_step()
        log.info("all %d workers finished training; the job's global step is %d", cfg.num_workers, step)
        return step

    def _push(self, compiled: _Compiled, batch: PreparedBatch, out: dict[str, Any], step: int, max_steps: int,
              times: StepTimes) -> int:
        """Claim a global step, then send the step's dense and sparse gradients (concurrently when remote).

        The claim comes first and never passes `max_steps`, so the job ends exactly at its final global
        step however many workers race for the last ones; a step whose claim is refused is dropped. Each
        table segment's learning rate at `step` comes from its feature slot (the slice's learning-rate
        function, or its optimizer's rate)."""
        t = now()
        grads = compiled.prep.unpack_gradients(batch.layout, out["emb_grads"].numpy())
        updates = compiled.prep.table_gradients(batch, grads)
        lrs = {table: compiled.slots[table].learning_rates(step) for table in updates}
        dense = self._dense_gradients(out["dense_grads"]) if "dense_grads" in out else None
        # one call per shard: the claim rides on shard 0's update, and nothing is applied if it is refused. A
        # job's only worker never claims past max_steps (its loop stops there), so nothing else can refuse it.
        claimed, granted = self.backend.push_step(updates, dense, step, lrs, max_steps,
                                                  sole_claimer=self.config.num_workers == 1)
        times.add("gradient_push", t)
        if not granted:
            self._refused[0] += 1
            self._refused[1] += batch.batch_size
            return claimed
        if self._stream is not None and batch.stream_seq is not None:
            self._stream.applied_batch(batch.stream_seq)
        return claimed

    def _dense_gradients(self, packed: tf.Tensor) -> list[np.ndarray]:
        """The step's dense gradients per variable (views of the one tensor the traced step packed)."""
        flat = packed.numpy()
        grads, offset = [], 0
        for var in self._dense.variables if self._dense is not None else ():
            size = int(np.prod(var.shape))
            grads.append(flat[offset:offset + size].reshape(var.shape))
            offset += size
        return grads

    def _save_due(self, step: int, last_step: int, last_time: float) -> bool:
        cfg = self.config
        if cfg.save_checkpoints_steps and step // cfg.save_checkpoints_steps > last_step // cfg.save_checkpoints_steps:
            return True
        return bool(cfg.save_checkpoints_secs and time.monotonic() - last_time >= cfg.save_checkpoints_secs)

    def save(self, step: int | None = None) -> str:
        """A checkpoint now; a stream job's carries the input offsets (after training, or with one worker:
        with several, mid-training checkpoints are the training loop's aligned rounds)."""
        step = self.backend.global_step() if step is None else step
        return self._save_at(step, self._stream.checkpoint_offsets() if self._stream is not None else None)

    def _save_at(self, step: int, stream_offsets: stream_source.Offsets | None) -> str:
        path = self.backend.save(self.config.model_dir, step, stream_offsets)
        log.info("checkpoint at global step %d: %s%s", step, path,
                 f" (input offsets {stream_offsets})" if stream_offsets is not None else "")
        if self._stream is not None and stream_offsets is not None and self.config.is_chief:
            self._stream.source.commit(stream_offsets)
        self.last_checkpoint = path
        for listener in self.checkpoint_listeners:
            listener.after_save(step, path)
        return path

    @staticmethod
    def _fetch(out: dict[str, Any], wanted: list[str]) -> dict[str, Any]:
        available = {"loss": out.get("loss"), **out["fetches"]}
        missing = [w for w in wanted if w not in available]
        if missing:
            raise KeyError(f"hooks asked for {missing}; fetchable outputs are {sorted(available)}")
        return {w: np.asarray(available[w]) for w in wanted}

    def _progress(self, total: int, initial: int):
        from tqdm import tqdm

        total = None if total >= UNBOUNDED else total  # type: ignore[assignment]

        return tqdm(total=total, initial=initial, desc=f"worker {self.config.worker_index}", dynamic_ncols=True)

    def _report(self, run: _TrainRun, compiled: _Compiled) -> None:
        rate = run.examples / max(time.perf_counter() - run.started, 1e-9)
        stats = {"loss": f"{run.loss:.4f}", "ex/s": f"{rate:.0f}"}
        for head, is_cls in zip(compiled.heads, compiled.classification):
            preds = np.concatenate([np.reshape(w[head], -1) for w in run.window])
            labels = np.concatenate([np.reshape(w[f"label:{head}"], -1) for w in run.window])
            value = evaluation.auc(labels, preds) if is_cls else evaluation.mse(labels, preds)
            stats[f"{head}_{'auc' if is_cls else 'mse'}"] = f"{value:.4f}"
        if run.bar is not None:
            run.bar.set_postfix(stats, refresh=False)
        else:
            log.info("step %d %s", run.step, " ".join(f"{k}={v}" for k, v in stats.items()))
        if self._step_times is not None:
            self._step_times.export(run.times, run.step)

    def evaluate(self, steps: int | None = None) -> dict[str, Any]:
        """AUC (classification heads) / MSE (regression heads) and mean loss over the eval input; the chief
        also writes them to TensorBoard under `<model_dir>/eval/`."""
        dataset = self._dataset(ModeKeys.EVAL)
        if steps is not None:
            dataset = dataset.take(steps)
        compiled = self._compile(ModeKeys.EVAL, dataset)
        global_step = self._maybe_restore()
        prefetcher = self._prefetcher(compiled, dataset, staleness=0)
        preds: dict[str, list[np.ndarray]] = {h: [] for h in compiled.heads}
        labels: dict[str, list[np.ndarray]] = {h: [] for h in compiled.heads}
        losses, examples = [], 0
        try:
            while (batch := prefetcher.get()) is not None:
                out = self._run_step(compiled, batch)
                prefetcher.done()
                losses.append(float(out["loss"]))
                examples += batch.batch_size
                for h in compiled.heads:
                    preds[h].append(np.reshape(out["fetches"][h].numpy(), -1))
                    labels[h].append(np.reshape(out["fetches"][f"label:{h}"].numpy(), -1))
        finally:
            prefetcher.close()
        metrics: dict[str, Any] = {"loss": float(np.mean(losses)) if losses else float("nan"),
                                   "examples": examples, "global_step": global_step}
        for h, is_cls in zip(compiled.heads, compiled.classification):
            p = np.concatenate(preds[h]) if preds[h] else np.zeros(0)
            lb = np.concatenate(labels[h]) if labels[h] else np.zeros(0)
            if is_cls:
                metrics[f"{h}_auc"] = evaluation.auc(lb, p)
            else:
                metrics[f"{h}_mse"] = evaluation.mse(lb, p)
        log.info("eval at global step %d: %s", global_step, metrics)
        if self.config.is_chief:
            self._write_eval_events(metrics, global_step)
        return metrics

    def _write_eval_events(self, metrics: dict[str, Any], global_step: int) -> None:
        """The metrics as TensorBoard scalars in `<model_dir>/eval/`, where tf.estimator put them (written
        with TF's core summary op and the scalar plugin's tag: tensorflow-cpu ships without TensorBoard)."""
        from tensorflow.core.framework.summary_pb2 import SummaryMetadata

        scalar = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))
        writer = tf.summary.create_file_writer(os.path.join(self.config.model_dir, "eval"))
        with writer.as_default():
            for name, value in metrics.items():
                if name not in ("global_step", "examples") and np.isfinite(value):
                    tf.summary.write(name, tf.constant(value, tf.float32), step=global_step,
                                     metadata=scalar.SerializeToString())
        writer.close()

    def predict(self):
        """Yield one {head: value} dict per example; with `output_path`, also write part-<worker> files."""
        dataset = self._dataset(ModeKeys.PREDICT)
        compiled = self._compile(ModeKeys.PREDICT, dataset)
        self._maybe_restore()
        dataset = self._distribute(dataset, ModeKeys.PREDICT)
        writer = None
        if self.model.output_path:
            writer = PredictionWriter(self.model.output_path, self.config.worker_index, self.model.output_fields,
                                      self.model.delimiter)
        prefetcher = self._prefetcher(compiled, dataset, staleness=0)
        try:
            while (batch := prefetcher.get()) is not None:
                out = self._run_step(compiled, batch)
                prefetcher.done()
                heads = {h: out["fetches"][h].numpy() for h in compiled.heads}
                if writer is not None:
                    writer.write(compiled.prep.features(batch), heads)
                for i in range(batch.batch_size):
                    yield {h: v[i] for h, v in heads.items()}
        finally:
            prefetcher.close()
            if writer is not None:
                writer.close()

    def dense_variables(self) -> list[tf.Variable]:
        """The model's trainable dense variables in creation order (after the first trace)."""
        return list(self._dense.variables) if self._dense is not None else []

    def table_sizes(self) -> dict[str, int]:
        return self.backend.table_sizes()

    def close(self) -> None:
        if self._step_times is not None:
            self._step_times.close()
        if self._stream is not None:
            self._stream.close()
        self.backend.close()
