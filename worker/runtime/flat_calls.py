"""Calling a traced function on its flat signature, skipping TensorFlow's per-call argument binding."""
from __future__ import annotations

from typing import Any


def call_flat(fn: Any, tensors: list) -> Any:
    """`fn(*tensors)` for a concrete function of a flat signature, without binding the arguments to its
    signature again on every call (that binding cost more than a small model's step on the CPU). The
    tensors must already have the signature's dtypes and shapes; the public call is the fallback."""
    call = getattr(fn, "_call_flat", None)
    if call is None or getattr(fn, "captured_inputs", None) is None:
        return fn(*tensors)
    return call(tensors, fn.captured_inputs)
