"""MovieLens-100K: fetch once (from the recbole wheel on PyPI), cache, and turn into id features.

The wheel is fetched with `pip download` and only the three ml-100k files are extracted. The processed
arrays are cached (default `data/movielens` under the repository, else `$MONOLITH_DATA_DIR`), so a later
run needs no network at all. Ids are dense per-feature vocab indices so a plain Keras `Embedding` model
can read the very same inputs.
"""
from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ps.persist.atomic_files import atomic_write_bytes

log = logging.getLogger(__name__)

WHEEL = "recbole==1.2.1"
_MEMBERS = {k: f"recbole/dataset_example/ml-100k/ml-100k.{k}" for k in ("inter", "user", "item")}
SINGLE_FEATURES = ("uid", "item", "age", "gender", "occupation", "zip")
FEATURES = (*SINGLE_FEATURES, "genres")


def default_cache_dir() -> Path:
    env = os.environ.get("MONOLITH_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data" / "movielens"


def user_cache_dir() -> Path:
    """A second copy of the raw files outside the repository, so a fresh clone works offline too."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "monolith" / "ml-100k"


def _have_raw(raw_dir: Path) -> bool:
    return all((raw_dir / f"ml-100k.{k}").exists() for k in _MEMBERS)


def _copy_raw(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for key in _MEMBERS:
        atomic_write_bytes(dst / f"ml-100k.{key}", (src / f"ml-100k.{key}").read_bytes())


def _download_raw(raw_dir: Path) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               WHEEL, "-d", tmp]
        log.info("fetching MovieLens-100K from the %s wheel", WHEEL)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("recbole-*.whl"))
        if proc.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download {WHEEL} (offline?) and no cached MovieLens copy exists in "
                               f"{raw_dir.parent}: {proc.stderr.strip()[-400:]}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for key, member in _MEMBERS.items():
                atomic_write_bytes(raw_dir / f"ml-100k.{key}", zf.read(member))


def _read(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="latin-1").splitlines()
    return [line.split("\t") for line in lines[1:] if line]


@dataclass
class MovieLens:
    """Examples sorted by time; `train`/`test` are the oldest 80% / newest 20%."""

    columns: dict[str, np.ndarray]      # single-valued features, label, timestamp: [n]
    genre_values: np.ndarray            # flat genre ids
    genre_splits: np.ndarray            # [n + 1]
    vocab_sizes: dict[str, int]

    @property
    def size(self) -> int:
        return int(self.columns["label"].size)

    def split(self, train_fraction: float = 0.8) -> tuple[MovieLens, MovieLens]:
        cut = int(self.size * train_fraction)
        return self.slice(0, cut), self.slice(cut, self.size)

    def slice(self, start: int, end: int) -> MovieLens:
        splits = self.genre_splits[start:end + 1]
        return MovieLens({k: v[start:end] for k, v in self.columns.items()},
                         self.genre_values[splits[0]:splits[-1]], splits - splits[0], self.vocab_sizes)


def _process(raw_dir: Path) -> dict[str, np.ndarray]:
    inter, users, items = (_read(raw_dir / f"ml-100k.{k}") for k in ("inter", "user", "item"))
    user_info = {row[0]: row[1:] for row in users}
    item_genres = {row[0]: row[3].split() if len(row) > 3 else [] for row in items}

    def vocab(values) -> dict[str, int]:
        return {v: i for i, v in enumerate(sorted(set(values)))}

    vocabs = {
        "uid": vocab(user_info), "item": vocab(item_genres),
        "age": vocab(u[0] for u in user_info.values()), "gender": vocab(u[1] for u in user_info.values()),
        "occupation": vocab(u[2] for u in user_info.values()), "zip": vocab(u[3] for u in user_info.values()),
        "genres": vocab(g for gs in item_genres.values() for g in gs),
    }
    inter.sort(key=lambda r: (float(r[3]), int(r[0]), int(r[1])))
    cols = {k: np.empty(len(inter), np.int64) for k in SINGLE_FEATURES}
    label = np.empty(len(inter), np.float32)
    ts = np.empty(len(inter), np.int64)
    genre_values: list[int] = []
    genre_splits = [0]
    for i, (u, it, rating, t) in enumerate(inter):
        age, gender, occ, zipc = user_info[u]
        for key, token in zip(SINGLE_FEATURES, (u, it, age, gender, occ, zipc)):
            cols[key][i] = vocabs[key][token]
        label[i] = float(float(rating) >= 4)
        ts[i] = int(float(t))
        genre_values.extend(vocabs["genres"][g] for g in item_genres[it])
        genre_splits.append(len(genre_values))
    return {**cols, "label": label, "timestamp": ts, "genre_values": np.array(genre_values, np.int64),
            "genre_splits": np.array(genre_splits, np.int64),
            "vocab_sizes": np.array([len(vocabs[k]) for k in FEATURES], np.int64)}


def load_movielens(cache_dir: str | os.PathLike | None = None) -> MovieLens:
    """The processed dataset, downloading and processing it on first use only."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    processed = cache / "ml-100k.npz"
    raw, user_copy = cache / "raw", user_cache_dir()
    if not processed.exists():
        if not _have_raw(raw):
            if _have_raw(user_copy):
                log.info("using the cached MovieLens copy in %s", user_copy)
                _copy_raw(user_copy, raw)
            else:
                _download_raw(raw)
        arrays = _process(raw)
        cache.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        # Several processes of one job may build the cache at once: each publishes under a unique temp name.
        atomic_write_bytes(processed, buf.getbuffer())
        log.info("cached processed MovieLens-100K at %s", processed)
    if _have_raw(raw) and not _have_raw(user_copy):
        try:
            _copy_raw(raw, user_copy)
        except OSError as exc:
            log.warning("could not keep a copy of the data in %s: %s", user_copy, exc)
    with np.load(processed) as data:
        arrays = {k: data[k] for k in data.files}
    sizes = dict(zip(FEATURES, (int(v) for v in arrays.pop("vocab_sizes"))))
    genre_values, genre_splits = arrays.pop("genre_values"), arrays.pop("genre_splits")
    return MovieLens(arrays, genre_values, genre_splits, sizes)
