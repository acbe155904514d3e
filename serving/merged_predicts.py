"""`MergedPredicts`: concurrent Predict requests of one model version run as one batch.

Requests that queue while another runs (`serving.coalescing`) are concatenated along their batch axis,
the signature runs once, and each request gets its own rows of every output back. A model call's fixed
cost (TensorFlow function call, the entry's second signature and its serving PS round trip in a
distributed export) is then paid once per batch. Like TensorFlow Serving's batching, this assumes a
signature treats the rows of a batch independently; it is opt-in (`monolith serve --merge-requests`).

Up to `max_in_flight` batches run at once (`monolith serve --concurrent-batches`): one model call of a
small model does not keep every core busy, so one batch at a time would trade latency for fewer calls.

Only requests that agree on signature, output filter, input names, dtypes and per-row shapes merge, and a
merged batch never exceeds the server's `--max-batch-size`. A request whose inputs do not share one batch
size, or a signature with an output that is not per row, runs alone (the signature is remembered as
unmergeable). If a merged run fails, each request runs again alone, so bad data in one request fails
that request only.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from serving.coalescing import Coalescer

Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class PredictCall:
    signature: str
    inputs: dict[str, np.ndarray]
    wanted: tuple[str, ...]

    @cached_property  # asked several times per merged batch; the inputs never change
    def rows(self) -> int | None:
        """The batch size all inputs share, or None (a scalar input, or inputs of different sizes)."""
        sizes = {v.shape[0] if v.ndim else None for v in self.inputs.values()}
        return sizes.pop() if len(sizes) == 1 else None

    @cached_property
    def kind(self) -> tuple:
        return (self.signature, self.wanted,
                tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in self.inputs.items())))


class MergedPredicts:
    """`predict(call)` through `run(signature, inputs, wanted)`, merged with concurrent compatible calls."""

    def __init__(self, run: Callable[[str, dict[str, np.ndarray], tuple[str, ...]], Outputs],
                 max_rows: int | None, observe: Callable[[int], None] = lambda requests: None,
                 max_in_flight: int = 2) -> None:
        self._run = run
        self._max_rows = max_rows
        self._observe = observe  # told how many requests each model call answers
        self._unmergeable: set[str] = set()
        self._calls: Coalescer[PredictCall, Outputs] = Coalescer(self._run_batch, max_in_flight)

    def predict(self, call: PredictCall) -> Outputs:
        if call.rows is None or call.signature in self._unmergeable:
            return self._run_one(call)
        return self._calls.call(call)

    def _run_one(self, call: PredictCall) -> Outputs:
        self._observe(1)
        return self._run(call.signature, call.inputs, call.wanted)

    def _run_batch(self, calls: list[PredictCall]) -> list[Outputs | BaseException]:
        results: list[Outputs | BaseException | None] = [None] * len(calls)
        for group in self._groups(calls):
            outs = self._run_group([calls[i] for i in group])
            for i, out in zip(group, outs):
                results[i] = out
        return results  # type: ignore[return-value]

    def _groups(self, calls: list[PredictCall]) -> list[list[int]]:
        """Indices of calls that may run together: same kind, at most max_rows rows in all."""
        groups: list[list[int]] = []
        open_group: dict[tuple, tuple[list[int], int]] = {}
        for i, call in enumerate(calls):
            rows = call.rows or 0
            group, total = open_group.get(call.kind, ([], 0))
            if group and self._max_rows is not None and total + rows > self._max_rows:
                group, total = [], 0
            if not group:
                groups.append(group)
            group.append(i)
            open_group[call.kind] = (group, total + rows)
        return groups

    def _run_group(self, calls: list[PredictCall]) -> list[Outputs | BaseException]:
        if len(calls) == 1:
            return [self._attempt(calls[0])]
        first = calls[0]
        sizes = [c.rows or 0 for c in calls]
        inputs = {k: np.concatenate([c.inputs[k] for c in calls]) for k in first.inputs}
        try:
            self._observe(len(calls))
            merged = self._run(first.signature, inputs, first.wanted)
        except Exception:  # noqa: BLE001 - one request's bad data: let each request get its own answer
            return [self._attempt(c) for c in calls]
        total = sum(sizes)
        if any(v.ndim == 0 or v.shape[0] != total for v in merged.values()):
            self._unmergeable.add(first.signature)
            return [self._attempt(c) for c in calls]
        bounds = np.cumsum([0, *sizes])
        return [{k: v[bounds[j]:bounds[j + 1]] for k, v in merged.items()} for j in range(len(calls))]

    def _attempt(self, call: PredictCall) -> Outputs | BaseException:
        try:
            return self._run_one(call)
        except Exception as exc:  # noqa: BLE001 - handed to that request's caller
            return exc
