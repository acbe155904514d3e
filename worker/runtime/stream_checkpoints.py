"""Exactly-once training from a stream: every checkpoint holds the input offsets its state was trained to.

- **Start.** The chief restores the latest complete checkpoint (always, even onto shards that kept or
  reloaded newer state: that state belongs to no known offsets) and hands its offsets to the other
  workers on the `chief-ready` barrier. Every worker joins the consumer group with its partitions
  paused, and waits until the workers' assignments (posted on a barrier) together cover every partition
  exactly once; then each positions its partitions at the restored offsets and starts reading.
- **Progress.** A batch counts once its gradients are applied (a refused global-step claim is not
  applied); batches must be applied in the order they were read.
- **Checkpoint (aligned).** The chief asks for round k on a barrier; each worker, at its next step,
  drains its in-flight pushes and arrives with its offsets; with every worker paused the chief saves the
  state with the merged offsets in the manifest, then releases them and commits the offsets to the
  consumer group (for monitoring only: a restart never reads them).
- **End.** Workers whose input ended (or whose `max_steps` was reached) leave their final offsets on the
  end-of-training barrier, still answering checkpoint rounds while they wait; the chief's final save
  carries all of them.

Any failure (a worker or PS shard dying, a consumer-group rebalance while reading) ends the job; the
next launch resumes from the last checkpoint, so each record is trained exactly once into the restored
state (docs/streaming.md).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from ps.persist.checkpoint import latest_checkpoint, read_meta, stream_offsets
from worker.modeling.stream_source import Offsets, Partition, StreamSource
from worker.runtime.backends import ParameterBackend
from worker.runtime.run_config import RunConfig

log = logging.getLogger(__name__)

_CHIEF = "worker:0"
_POLL_S = 0.2


def encode(offsets: Offsets | None) -> bytes:
    return json.dumps({"offsets": offsets}).encode()


def decode(note: bytes) -> Offsets | None:
    offsets = json.loads(note.decode())["offsets"]
    return None if offsets is None else {t: {int(p): int(o) for p, o in parts.items()} for t, parts in offsets.items()}


def merge(parts: list[Offsets]) -> Offsets:
    """The job's offsets from each worker's: every partition is read by exactly one worker."""
    merged: Offsets = {}
    for offsets in parts:
        for topic, partitions in offsets.items():
            mine = merged.setdefault(topic, {})
            twice = sorted(set(mine) & set(partitions))
            if twice:
                raise RuntimeError(f"partitions {topic}{twice} were read by two workers: their offsets cannot be "
                                   f"merged")
            mine.update(partitions)
    return merged


def latest_stream_offsets(model_dir: str) -> tuple[int, Offsets | None] | None:
    """(step, input offsets) of the latest complete checkpoint under `model_dir`; None when there is none."""
    path = latest_checkpoint(model_dir)
    if path is None:
        return None
    return int(read_meta(path, "checkpoint manifest")["step"]), stream_offsets(path)


def restore_for_stream(backend: ParameterBackend, config: RunConfig) -> Offsets | None:
    """The chief restores the latest checkpoint and publishes its offsets; the others wait for them."""
    if not config.is_chief:
        return decode(backend.wait_ready(max(config.ready_timeout_s, 300.0)) or encode(None))
    found = latest_stream_offsets(config.model_dir)
    offsets = None
    if found is not None:
        step, offsets = found
        backend.restore(config.model_dir, step)
        if offsets is None:
            log.warning("checkpoint %d has no stream offsets (its job did not train from a stream): the input "
                        "starts at its initial position", step)
        else:
            log.info("restored checkpoint %d; the input resumes at %s", step, offsets)
    backend.mark_ready(encode(offsets))
    return offsets


class StreamCheckpoints:
    def __init__(self, source: StreamSource, backend: ParameterBackend, config: RunConfig) -> None:
        self.source, self.backend, self.config = source, backend, config
        self.me = f"worker:{config.worker_index}"
        self.shared = config.distributed and config.num_workers > 1
        self.applied = -1
        self.final: Offsets | None = None
        self._round = 0
        self._next_look = 0.0

    # --- start ---------------------------------------------------------------------------------------
    def start(self, offsets: Offsets | None, timeout_s: float) -> None:
        """Join the group, wait until the assignment is settled across workers, start at `offsets`."""
        self.source.join()
        deadline = time.monotonic() + timeout_s
        while True:
            mine = self.source.poll_assignment()
            everything = self.source.partitions()
            if everything and self._settled(mine, everything):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the consumer group did not assign all {len(everything)} partitions across "
                                   f"{self.config.num_workers} workers within {timeout_s:g}s (this worker has "
                                   f"{sorted(mine)})")
        self.source.start(offsets)

    def _settled(self, mine: frozenset[Partition], everything: frozenset[Partition]) -> bool:
        if not self.shared:
            return mine == everything
        notes = self.backend.arrive("stream-assignment", self.me, self.config.num_workers,
                                    json.dumps(sorted(mine)).encode())
        if len(notes) < self.config.num_workers:
            return False
        assigned = [frozenset(tuple(p) for p in json.loads(n.decode())) for n in notes.values()]
        return sum(map(len, assigned)) == len(everything) and frozenset().union(*assigned) == everything

    # --- progress ------------------------------------------------------------------------------------
    def applied_batch(self, seq: int) -> None:
        if seq != self.applied + 1:
            raise RuntimeError(f"stream batch {seq} was trained after batch {self.applied}: the input's batches "
                               f"must reach the trainer in order (do not shuffle, filter or re-batch them)")
        self.applied = seq

    def offsets(self) -> Offsets:
        """This worker's offsets through the last applied batch."""
        return self.source.offsets_through(self.applied)

    def checkpoint_offsets(self) -> Offsets:
        """Offsets for a checkpoint taken outside the rounds (after training, or by a single worker)."""
        if self.final is not None:
            return self.final
        if self.shared:
            raise RuntimeError("with several workers a stream checkpoint is taken by the training loop's rounds")
        return self.offsets()

    # --- aligned checkpoints -------------------------------------------------------------------------
    def checkpoint(self, drain: Callable[[], int], save: Callable[[int, Offsets], object]) -> int:
        """The chief: pause every worker, save with everyone's offsets (`save` also commits them to the
        group), release the workers. The global step saved at."""
        k = self._round
        self._round += 1
        if self.shared:
            self.backend.arrive(f"stream-ckpt/{k}/request", _CHIEF, 1)
        step = drain()
        offsets = self.offsets()
        if self.shared:
            notes = self.backend.wait_for_workers(f"stream-ckpt/{k}/ready", 0, self.config.num_workers,
                                                  self.config.barrier_timeout_s, note=encode(offsets))
            offsets = merge([decode(n) or {} for n in notes.values()])
            step = self.backend.global_step()
        save(step, offsets)
        if self.shared:
            self.backend.arrive(f"stream-ckpt/{k}/done", _CHIEF, 1)
        return step

    def serve_round(self, drain: Callable[[], object]) -> bool:
        """A non-chief worker between steps: take part in the chief's round if one was asked for."""
        if not self.shared or self.config.is_chief or time.monotonic() < self._next_look:
            return False
        self._next_look = time.monotonic() + _POLL_S
        k = self._round
        if _CHIEF not in self.backend.arrive(f"stream-ckpt/{k}/request", None, 1):
            return False
        drain()
        self.backend.wait_for_workers(f"stream-ckpt/{k}/ready", self.config.worker_index, self.config.num_workers,
                                      self.config.barrier_timeout_s, note=encode(self.offsets()))
        self._wait_for_chief(f"stream-ckpt/{k}/done")
        self._round += 1
        return True

    def _wait_for_chief(self, name: str) -> None:
        deadline = time.monotonic() + self.config.barrier_timeout_s
        while _CHIEF not in self.backend.arrive(name, None, 1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the chief did not finish checkpoint round {name!r} within "
                                   f"{self.config.barrier_timeout_s:g}s")
            time.sleep(_POLL_S / 2)

    # --- end -----------------------------------------------------------------------------------------
    def finish(self, name: str) -> Offsets:
        """Leave this worker's final offsets at the end-of-training barrier `name` and wait for every worker
        (answering checkpoint rounds meanwhile); the job's offsets."""
        offsets = self.offsets()
        if not self.shared:
            self.final = offsets
            return offsets
        deadline = time.monotonic() + self.config.barrier_timeout_s
        while True:
            notes = self.backend.arrive(name, self.me, self.config.num_workers, encode(offsets))
            if len(notes) >= self.config.num_workers:
                break
            if self.serve_round(lambda: None):
                continue
            if time.monotonic() > deadline:
                missing = sorted({f"worker:{i}" for i in range(self.config.num_workers)} - set(notes))
                raise TimeoutError(f"barrier {name!r}: missing {', '.join(missing)} after "
                                   f"{self.config.barrier_timeout_s:g}s")
            time.sleep(_POLL_S)
        self.final = merge([decode(n) or {} for n in notes.values()])
        return self.final

    def close(self) -> None:
        self.source.close()
