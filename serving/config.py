"""`ServeConfig`: what `monolith serve` serves and how, checked once where the flags enter."""
from __future__ import annotations

from dataclasses import dataclass, field

from ps.config import ServerConfig

DEFAULT_MAX_BATCH_SIZE = 8192


@dataclass(frozen=True)
class ServeConfig:
    export_base: str
    model_name: str = "default"
    ps_addresses: tuple[str, ...] = ()
    """The serving PS shards in shard order (a distributed export); empty for a standalone export."""
    keep_versions: int = 2
    poll_s: float = 1.0
    wait_for_model_s: float = 300.0
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    """A Predict whose inputs hold more rows gets INVALID_ARGUMENT (the byte limit, RESOURCE_EXHAUSTED, is
    `server.max_message_bytes`)."""
    merge_requests: bool = False
    """Concurrent Predicts that queue while `concurrent_batches` batches run go out as one batch
    (`serving.merged_predicts`); opt-in: benchmarks/RESULTS.md (serving_bench) shows when it pays."""
    concurrent_batches: int = 2
    ps_timeout_s: float = 5.0
    dense_sync: bool = False
    """Take dense values from the training PS (`EntrySync/SyncDense`, serving/dense_sync_receiver.py)."""
    server: ServerConfig = field(default_factory=lambda: ServerConfig(port=0, threads=16, grace_s=5.0,
                                                                      max_message_bytes=64 << 20))
    """The gRPC transport: port, host, threads, largest request (larger ones get RESOURCE_EXHAUSTED), grace,
    metrics port."""

    def __post_init__(self) -> None:
        problems = [
            (bool(self.export_base), "--export-base must be given"),
            (bool(self.model_name), "--model-name must be non-empty"),
            (all(a and ":" in a for a in self.ps_addresses), f"--ps-addresses must be host:port,... got "
                                                             f"{list(self.ps_addresses)}"),
            (self.keep_versions >= 1, f"--keep-versions must be >= 1, got {self.keep_versions}"),
            (self.poll_s > 0, f"--poll-s must be > 0, got {self.poll_s}"),
            (self.wait_for_model_s >= 0, f"--wait-for-model-s must be >= 0, got {self.wait_for_model_s}"),
            (self.max_batch_size >= 1, f"--max-batch-size must be >= 1, got {self.max_batch_size}"),
            (self.concurrent_batches >= 1, f"--concurrent-batches must be >= 1, got {self.concurrent_batches}"),
            (self.ps_timeout_s > 0, f"--ps-timeout-s must be > 0, got {self.ps_timeout_s}"),
            (not self.dense_sync or bool(self.ps_addresses),
             "--dense-sync serves the entry of a distributed export: it needs --ps-addresses"),
        ]
        for ok, message in problems:
            if not ok:
                raise ValueError(message)
