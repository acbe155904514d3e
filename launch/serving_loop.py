"""The serving half of `monolith local --serve`: what the training roles are told, and when and how the
serving PS shards and the entry start.

The loop on one machine: the training PS shards push changed rows every `sync_interval_s` to serving PS
shards (`serve-ps --update-policy training-sync`); the chief exports a distributed model after every
checkpoint; once the first export is complete the serving PS shards load its `ps_<i>` parts and
`monolith serve` serves its entry (and picks up every later export's entry); the training PS shards push
their dense variables to the entry every `dense_sync_interval_s` (`monolith serve --dense-sync`). Every
port is chosen up front, so the training PS shards know the serving addresses before those listen (their
syncs retry with backoff, capped at `max_backoff_s`, until they do).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from launch.supervision import monolith_command
from services.export_layout import ENTRY, ps_sub_model
from services.ports import free_port

DEFAULT_SYNC_INTERVAL_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving (--serve)")
    group.add_argument("--serve", action="store_true",
                       help="also serve the model while it trains: serving PS shards kept fresh by the online sync "
                            "and `monolith serve` (addresses logged); the chief exports after every checkpoint")
    group.add_argument("--num-serving-ps", type=int, default=None, help="serving PS shards (default: --num-ps)")
    group.add_argument("--sync-interval-s", type=float, default=DEFAULT_SYNC_INTERVAL_S,
                       help="how often each training PS shard pushes its changed rows to the serving PS shards "
                            "(0: no online sync, the serving PS shards keep the export they loaded)")
    group.add_argument("--dense-sync-interval-s", type=float, default=None,
                       help="how often the training PS shards push their dense variables to the entry (default: "
                            "--sync-interval-s; 0: the entry's dense part changes only with each export)")
    group.add_argument("--sync-float16", action="store_true", help="sync rows as float16")
    group.add_argument("--serve-port", type=int, default=0, help="the entry's gRPC port (0: a free one, logged)")
    group.add_argument("--export-base", default=None, help="where the chief exports (default: <model-dir>/export)")


@dataclass(frozen=True)
class ServingLoop:
    host: str
    export_base: str
    serving_ps: tuple[str, ...]
    """host:port of serving PS shard j at position j."""
    entry: str
    sync_interval_s: float
    sync_float16: bool = False
    dense_sync_interval_s: float = 0.0

    @property
    def max_backoff_s(self) -> float:
        """Short, so the syncs reach the serving processes soon after they start (they start after the first
        export, which takes a while); the training PS keeps its normal cap otherwise."""
        return max(2.0, self.sync_interval_s, self.dense_sync_interval_s)

    def ps_args(self) -> list[str]:
        """`monolith run` arguments for the training PS role: the online syncs (rows, dense) on."""
        args = []
        if self.sync_interval_s:
            args += ["--sync-interval-s", str(self.sync_interval_s), "--sync-serving-ps", ",".join(self.serving_ps),
                     *(["--sync-float16"] if self.sync_float16 else [])]
        if self.dense_sync_interval_s:
            args += ["--dense-sync-interval-s", str(self.dense_sync_interval_s), "--sync-entry-servers", self.entry]
        return args + ["--sync-max-backoff-s", str(self.max_backoff_s)] if args else []

    def train_args(self) -> list[str]:
        """`monolith train` arguments for every worker: the chief exports for the serving shards."""
        return ["--export-base", self.export_base, "--export-mode", "distributed",
                "--num-serving-shards", str(len(self.serving_ps))]

    def complete_export(self) -> str | None:
        """The newest complete export's version, or None yet. The exporter renames each part into place, the
        serving shards' parts before the entry's, so an entry version means every part is there."""
        entry = Path(self.export_base) / ENTRY
        versions = [p.name for p in entry.iterdir() if p.name.isdigit()] if entry.is_dir() else []
        return max(versions, key=int) if versions else None

    def serving_ps_command(self, index: int, version: str) -> list[str]:
        export_dir = Path(self.export_base) / ps_sub_model(index) / version
        port = self.serving_ps[index].rpartition(":")[2]
        return monolith_command("serve-ps", "--export-dir", str(export_dir), "--port", port, "--host", self.host,
                                "--update-policy", "training-sync")

    def entry_command(self) -> list[str]:
        return monolith_command("serve", "--export-base", self.export_base,
                                "--port", self.entry.rpartition(":")[2], "--host", self.host,
                                "--ps-addresses", ",".join(self.serving_ps),
                                *(["--dense-sync"] if self.dense_sync_interval_s else []))


def plan(args: argparse.Namespace, model_dir: str, host: str, taken: set[int]) -> ServingLoop:
    """Ports (free, none of `taken`, which gains them) and paths of the serving loop of `args`."""
    num = args.num_serving_ps if args.num_serving_ps is not None else args.num_ps
    if args.num_ps < 1 or num < 1:
        raise ValueError(f"--serve needs PS shards and serving PS shards, got --num-ps {args.num_ps} "
                         f"--num-serving-ps {num}")
    dense_s = args.sync_interval_s if args.dense_sync_interval_s is None else args.dense_sync_interval_s
    for flag, value in (("--sync-interval-s", args.sync_interval_s), ("--dense-sync-interval-s", dense_s)):
        if not value >= 0:
            raise ValueError(f"{flag} must be >= 0, got {value}")

    def port() -> int:
        p = free_port(host)
        while p in taken:
            p = free_port(host)
        taken.add(p)
        return p

    serving = tuple(f"{host}:{port()}" for _ in range(num))
    entry = f"{host}:{args.serve_port or port()}"
    return ServingLoop(host, args.export_base or str(Path(model_dir) / "export"), serving, entry,
                       args.sync_interval_s, args.sync_float16, dense_s)
