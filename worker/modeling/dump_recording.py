"""What a model declares while it is built, noted for a model dump (`monolith dump`).

Monolith wrapped `create_embedding_feature_column` and `lookup_embedding_slice` to record their calls while
a dump was being made; here the model API reports each feature column and slice to the recorder of the
current thread, if one is active. Only constants can be dumped: a slice whose learning rate is a function
is refused while recording, naming the slice, as Monolith did.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

from worker.modeling.feature import FeatureColumn, FeatureSlice
from worker.modeling.thread_scope import ThreadScope


@dataclass
class SliceUse:
    feature_name: str
    slice: FeatureSlice
    learning_rate: float | None  # a constant learning_rate_fn, if one was given


@dataclass
class DumpRecorder:
    features: dict[str, FeatureColumn] = field(default_factory=dict)
    shared_names: dict[str, str] = field(default_factory=dict)
    slices: dict[tuple[str, str], SliceUse] = field(default_factory=dict)

    def feature_column(self, fc: FeatureColumn, shared_name: str | None) -> None:
        self.features.setdefault(fc.feature_name, fc)
        if shared_name:
            self.shared_names[fc.feature_name] = shared_name

    def slice_lookup(self, feature_name: str, fs: FeatureSlice, learning_rate_fn: Any) -> None:
        if (feature_name, fs.name) in self.slices:
            return
        rate = None
        if learning_rate_fn is not None:
            if isinstance(learning_rate_fn, bool) or not isinstance(learning_rate_fn, (int, float)):
                raise ValueError(
                    f"slice {fs.name!r} of table {fs.slot.name!r} (feature {feature_name!r}) has a learning-rate "
                    f"function {learning_rate_fn!r}: a model dump records constants only; give the slice's "
                    f"optimizer a learning_rate (or a float learning_rate_fn) to dump this model")
            rate = float(learning_rate_fn)
        self.slices[(feature_name, fs.name)] = SliceUse(feature_name, fs, rate)


_recorder: ThreadScope[DumpRecorder] = ThreadScope()


def recording() -> contextlib.AbstractContextManager[DumpRecorder]:
    return _recorder.scope(DumpRecorder())


def current() -> DumpRecorder | None:
    return _recorder.current()
