"""The versions of one model under an export base: load the newest, warm it up, switch atomically.

A version is a directory named by an integer holding `saved_model.pb` (temporary directories start with
'.', so half-written exports are never seen). A new version is loaded and its warmup requests
(`assets.extra/tf_serving_warmup_requests`) replayed before it is published; publishing replaces one
dict, so a request picks a version once and finishes on it even if a newer one appears meanwhile. The
last `keep` versions stay loaded (requests may name one); versions deleted from disk are unloaded.
A version that fails to load or warm up is not published and not retried until its directory changes.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ps.errors import PSNotFound, PSUnavailable
from services.export_layout import ASSETS_EXTRA, WARMUP_FILE
from services.periodic import Periodic

log = logging.getLogger(__name__)

WARMUP = f"{ASSETS_EXTRA}/{WARMUP_FILE}"


@dataclass
class Failure:
    mtime_ns: int
    message: str


def list_versions(base: str | Path) -> list[int]:
    root = Path(base)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / "saved_model.pb").is_file())


def _transient(exc: BaseException) -> bool:
    """A serving PS shard that is down (or slow) now may answer at the next poll."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, PSUnavailable):
            return True
        cause = cause.__cause__
    return False


class ModelVersions:
    def __init__(self, name: str, base: str | Path, load: Callable[[int, Path], object],
                 warmup: Callable[[object, Path], int], keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.name, self.base, self.keep = name, Path(base), keep
        self._load, self._warmup = load, warmup
        self._loaded: dict[int, object] = {}
        self.failed: dict[int, Failure] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._watch: Periodic | None = None

    # -- reading (any thread) ---------------------------------------------------------------------
    def get(self, version: int | None = None):
        loaded = self._loaded  # one read: the request keeps this version even if a switch happens now
        if not loaded:
            raise PSUnavailable(f"model {self.name!r}: no version loaded yet (watching {self.base})")
        if version is None:
            return loaded[max(loaded)]
        if version not in loaded:
            raise PSNotFound(f"model {self.name!r} has no version {version} loaded (loaded: {sorted(loaded)})")
        return loaded[version]

    @property
    def loaded_versions(self) -> list[int]:
        return sorted(self._loaded)

    # -- loading (the watcher thread) -------------------------------------------------------------
    def refresh(self) -> list[int]:
        """Load the newest version on disk if it is new; returns the versions loaded afterwards."""
        with self._refresh_lock:
            on_disk = list_versions(self.base)
            loaded = dict(self._loaded)
            gone = [v for v in loaded if v not in on_disk]
            for v in gone:
                if len(loaded) > 1:
                    log.info("model %s: version %d was deleted from disk: unloaded", self.name, v)
                    del loaded[v]
            newest = max(on_disk, default=None)
            if newest is not None and newest not in loaded and newest > max(loaded, default=-1):
                servable = self._try_load(newest)
                if servable is not None:
                    loaded[newest] = servable
            for v in sorted(loaded)[:-self.keep]:
                del loaded[v]
            if loaded != self._loaded:
                self._loaded = loaded
                log.info("model %s: serving version %d (loaded %s)", self.name, max(loaded), sorted(loaded))
            return sorted(loaded)

    def _try_load(self, version: int):
        path = self.base / str(version)
        mtime = path.stat().st_mtime_ns
        failure = self.failed.get(version)
        if failure is not None and failure.mtime_ns == mtime:
            return None
        started = time.perf_counter()
        try:
            servable = self._load(version, path)
            warmed = self._warmup(servable, path / WARMUP) if (path / WARMUP).is_file() else 0
        except Exception as exc:  # a bad export must not stop serving the current version
            if _transient(exc):
                log.warning("model %s: version %d not loaded yet (will retry): %s", self.name, version, exc)
                return None
            self.failed[version] = Failure(mtime, str(exc))
            log.error("model %s: version %d failed to load: %s", self.name, version, exc)
            return None
        self.failed.pop(version, None)
        log.info("model %s: version %d loaded in %.2fs (%d warmup requests)", self.name, version,
                 time.perf_counter() - started, warmed)
        return servable

    def start(self, poll_s: float = 1.0) -> None:
        self._watch = Periodic(f"watch-{self.name}", poll_s, self.refresh, log, self._stop).start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.close(timeout=10)
