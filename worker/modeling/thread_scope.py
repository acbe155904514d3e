"""A value that code running on this thread sees while a `with` block is open.

The model API reaches its runtime context this way (the looked-up rows of a step, the recorder of a
model dump, the parsers and stream sources an `input_fn` creates): the user's functions keep their
signatures, and a nested block restores the outer value when it closes.
"""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ThreadScope(Generic[T]):
    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def scope(self, value: T) -> Iterator[T]:
        previous = getattr(self._local, "value", None)
        self._local.value = value
        try:
            yield value
        finally:
            self._local.value = previous

    def current(self) -> T | None:
        return getattr(self._local, "value", None)
