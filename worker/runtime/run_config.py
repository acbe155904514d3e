"""How one worker runs: local or against PS shards, its index, staleness and checkpoint policy."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RunConfig:
    model_dir: str
    ps_addresses: list[str] | None = None   # None: local mode (in-process store)
    worker_index: int = 0
    num_workers: int = 1
    staleness: int = 0                       # steps a lookup may run ahead of the gradient pushes
    save_checkpoints_steps: int | None = None
    save_checkpoints_secs: float | None = None
    keep_checkpoint_max: int = 5
    log_step_count_steps: int = 100
    dispatcher: str | None = None            # grpc://host:port of a tf.data service dispatcher
    job_name: str | None = None              # tf.data service job name (default: derived per run)
    progress: bool = False                   # live tqdm line
    ready_timeout_s: float = 60.0
    launch_id: str | None = None             # the same for every worker of one launch of the job, new per launch
    barrier_timeout_s: float = 600.0         # how long workers wait for each other at the end of training
    export_step_times: bool = False          # step-time breakdown to Prometheus and <model_dir>/train (TensorBoard)

    def __post_init__(self) -> None:
        if not self.model_dir or not isinstance(self.model_dir, str):
            raise ValueError(f"RunConfig.model_dir must be a non-empty path, got {self.model_dir!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"RunConfig.num_workers must be an int >= 1, got {self.num_workers!r}")
        if not isinstance(self.worker_index, int) or not 0 <= self.worker_index < self.num_workers:
            raise ValueError(f"RunConfig.worker_index must be in [0, {self.num_workers}), got {self.worker_index!r}")
        if not isinstance(self.staleness, int) or self.staleness < 0:
            raise ValueError(f"RunConfig.staleness must be an int >= 0, got {self.staleness!r}")
        for name in ("save_checkpoints_steps", "save_checkpoints_secs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise ValueError(f"RunConfig.{name} must be > 0 or None, got {value!r}")
        if not isinstance(self.barrier_timeout_s, (int, float)) or self.barrier_timeout_s <= 0:
            raise ValueError(f"RunConfig.barrier_timeout_s must be > 0, got {self.barrier_timeout_s!r}")
        if self.launch_id is not None and (not isinstance(self.launch_id, str) or not self.launch_id):
            raise ValueError(f"RunConfig.launch_id must be a non-empty string or None, got {self.launch_id!r}")
        if not isinstance(self.keep_checkpoint_max, int) or self.keep_checkpoint_max < 1:
            raise ValueError(f"RunConfig.keep_checkpoint_max must be an int >= 1, got {self.keep_checkpoint_max!r}")
        self._check_addresses()

    def _check_addresses(self) -> None:
        if self.ps_addresses is not None:
            if not self.ps_addresses:
                raise ValueError("RunConfig.ps_addresses is empty: pass None for local mode")
            for addr in self.ps_addresses:
                host, _, port = addr.rpartition(":")
                if not host or not port.isdigit():
                    raise ValueError(f"RunConfig.ps_addresses: {addr!r} is not host:port")
        if self.dispatcher is not None and not self.dispatcher.startswith("grpc://"):
            raise ValueError(f"RunConfig.dispatcher must look like grpc://host:port, got {self.dispatcher!r}")

    @property
    def is_chief(self) -> bool:
        return self.worker_index == 0

    @property
    def distributed(self) -> bool:
        return self.ps_addresses is not None
