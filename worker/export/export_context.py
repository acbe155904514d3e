"""Export mode: whether a model is being exported, how, and the extra signatures it contributes.

Export mode is global and not nestable (entering it twice raises), as in the original. While it is
active, code that builds graphs can ask `is_exporting()` and register signatures on the current
`ExportContext`; the exporters put every registered signature into the SavedModel of its sub-model
("entry" by default, or "ps_<i>" and other sub-models of a distributed export).

A signature's `inputs` are `tf.TensorSpec`s by name and its `outputs` a callable taking those inputs as
keyword tensors and returning {name: tensor}: TF2 builds graphs from functions, so a signature is a
function and not a pair of graph tensors.
"""
from __future__ import annotations

import contextlib
import enum
from collections import defaultdict
from collections.abc import Callable
from typing import Any, NamedTuple

import tensorflow as tf

from services.export_layout import ENTRY
from worker.export.monolith_export import monolith_export


@monolith_export
class ExportMode(enum.Enum):
    NONE = 0
    STANDALONE = 1
    DISTRIBUTED = 2


class SavedModelSignature(NamedTuple):
    name: str
    inputs: dict[str, tf.TensorSpec]
    outputs: Callable[..., dict[str, tf.Tensor]] | dict[str, Any]


@monolith_export
class ExportContext:
    def __init__(self, with_remote_gpu: bool = False) -> None:
        self.sub_graphs: dict[str, list[str]] = defaultdict(list)        # sub-model -> its signature names
        self.dense_sub_graphs: dict[str, list[str]] = defaultdict(list)
        self._signatures: dict[str, dict[str, SavedModelSignature]] = defaultdict(dict)
        self._with_remote_gpu = with_remote_gpu

    def add_signature(self, graph: str, name: str, inputs: dict, outputs) -> None:
        if name in self._signatures[graph]:
            raise ValueError(f"signature {name!r} is already defined for sub-model {graph!r}")
        self._signatures[graph][name] = SavedModelSignature(name, dict(inputs), outputs)
        if graph != ENTRY:
            self.sub_graphs[graph].append(name)

    def merge_signature(self, graph: str, name: str, inputs: dict, outputs: dict) -> None:
        """Add inputs/outputs to a dict-valued signature (created empty if absent)."""
        sig = self._signatures[graph].get(name) or SavedModelSignature(name, {}, {})
        if callable(sig.outputs):
            raise ValueError(f"signature {name!r} of {graph!r} is a function and cannot be merged into")
        self._signatures[graph][name] = SavedModelSignature(name, {**sig.inputs, **inputs}, {**sig.outputs, **outputs})

    def signatures(self, graph: str = ENTRY) -> list[SavedModelSignature]:
        return list(self._signatures.get(graph, {}).values())

    @property
    def with_remote_gpu(self) -> bool:
        return self._with_remote_gpu

    @property
    def sub_graph_num(self) -> int:
        return len(self.sub_graphs)


EXPORT_MODE = ExportMode.NONE
EXPORT_CTX: ExportContext | None = None


def is_exporting() -> bool:
    return EXPORT_MODE != ExportMode.NONE


def is_exporting_standalone() -> bool:
    return EXPORT_MODE == ExportMode.STANDALONE


def is_exporting_distributed() -> bool:
    return EXPORT_MODE == ExportMode.DISTRIBUTED


def get_current_export_ctx() -> ExportContext | None:
    return EXPORT_CTX


@contextlib.contextmanager
def enter_export_mode(mode: ExportMode, export_ctx: ExportContext | None = None):
    """Export mode for the block; a nested call raises (one export at a time per process)."""
    global EXPORT_MODE, EXPORT_CTX
    if EXPORT_MODE != ExportMode.NONE or EXPORT_CTX is not None:
        raise RuntimeError(f"already in export mode {EXPORT_MODE.name}: export mode cannot be nested")
    if not isinstance(mode, ExportMode) or mode == ExportMode.NONE:
        raise ValueError(f"mode must be ExportMode.STANDALONE or DISTRIBUTED, got {mode!r}")
    EXPORT_MODE, EXPORT_CTX = mode, export_ctx or ExportContext()
    try:
        yield EXPORT_CTX
    finally:
        EXPORT_MODE, EXPORT_CTX = ExportMode.NONE, None


def is_dry_run_or_exporting() -> bool:
    return is_exporting() or hasattr(tf.compat.v1.get_default_graph(), "dry_run")
