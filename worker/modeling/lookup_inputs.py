"""The embedding rows a traced step receives, visible to feature columns while `model_fn` is traced.

The worker looks rows up outside the graph (deduplicated per feature) and feeds them in as tensors;
a feature column then gathers and pools them. This module holds those tensors for the current trace.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import tensorflow as tf

from worker.modeling.thread_scope import ThreadScope


@dataclass
class LookupInputs:
    rows: dict[str, tf.Tensor]        # feature -> [unique ids of the feature in the batch, table dim]
    index: dict[str, tf.Tensor]       # feature -> int32 [ids in the batch]: position of each id in `rows`
    row_splits: dict[str, tf.Tensor]  # feature -> int64 [batch + 1]
    used: set[str] = field(default_factory=set)


_inputs: ThreadScope[LookupInputs] = ThreadScope()


def lookup_inputs(inputs: LookupInputs) -> contextlib.AbstractContextManager[LookupInputs]:
    return _inputs.scope(inputs)


def current() -> LookupInputs | None:
    return _inputs.current()
