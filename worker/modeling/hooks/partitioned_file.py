"""An append-only text sink split into `part_000000.<ext>`, `part_000001.<ext>`, ... of bounded length."""
from __future__ import annotations

import os
import re
import threading
import time
from typing import TextIO

IDLE_SECS = 24 * 3600


class WriteOnlyFileAndStat:
    """Lines for one key (a directory): buffered, written in batches, rolled every `partition_size` lines.

    `write()` flushes the buffer first when it already holds `batch_size` lines. A flush fills the current
    part up to `partition_size` lines and continues in the next one; parts are opened when their first line
    is written, so no empty part is left behind. Numbering continues after any parts already in the
    directory (a restarted worker never overwrites). `is_available()` is False once idle for 24 h.
    """

    def __init__(self, key: str, partition_size: int = 1_000_000, file_ext: str = "txt", batch_size: int = 1024,
                 clock=time.time) -> None:
        if partition_size < 1:
            raise ValueError(f"partition_size must be >= 1, got {partition_size!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.key, self.partition_size, self.file_ext, self.batch_size = key, partition_size, file_ext, batch_size
        self._clock = clock
        self._lock = threading.RLock()
        self._buffer: list[str] = []
        self._stream: TextIO | None = None
        self._lines_in_part = 0
        os.makedirs(key, exist_ok=True)
        pattern = re.compile(rf"part_(\d{{6}})\.{re.escape(file_ext)}$")
        existing = [int(m.group(1)) for name in os.listdir(key) if (m := pattern.match(name))]
        self.partition = max(existing) + 1 if existing else 0
        self.last_update = clock()

    def path(self, partition: int | None = None) -> str:
        part = self.partition if partition is None else partition
        return os.path.join(self.key, f"part_{part:06d}.{self.file_ext}")

    def write(self, line: str) -> None:
        with self._lock:
            if len(self._buffer) >= self.batch_size:
                self.flush()
            self._buffer.append(line.rstrip("\n"))
            self.last_update = self._clock()

    def flush(self) -> None:
        with self._lock:
            pending, self._buffer = self._buffer, []
            while pending:
                if self._lines_in_part >= self.partition_size:
                    self._roll()
                room = self.partition_size - self._lines_in_part
                chunk, pending = pending[:room], pending[room:]
                if self._stream is None:
                    self._stream = open(self.path(), "a", encoding="utf-8")  # noqa: SIM115 - closed on roll/close
                self._stream.write("".join(f"{line}\n" for line in chunk))
                self._lines_in_part += len(chunk)
            if self._stream is not None:
                self._stream.flush()
            if self._lines_in_part >= self.partition_size:
                self._roll()

    def _roll(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self.partition += 1
        self._lines_in_part = 0

    def is_available(self) -> bool:
        return self._clock() - self.last_update < IDLE_SECS

    def close(self) -> None:
        with self._lock:
            self.flush()
            if self._stream is not None:
                self._stream.close()
                self._stream = None
