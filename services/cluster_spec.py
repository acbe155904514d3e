"""Who is in the job and who this process is, from `MLP_*` variables or `TF_CONFIG`.

The rest of the code never reads environment variables: it receives a `ClusterSpec`. Roles are lower
case (`ps`, `worker`, `dispatcher`, `dsworker`); the chief is worker 0. A `TF_CONFIG` `chief` task is
folded into the worker list as worker 0 (`worker` task k becomes worker k+1, as in Monolith:
docs/monolith-reference.md).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.mlp_env import MLPEnv, MLPEnvError, format_addr, split_addr

ROLES = ("ps", "worker", "dispatcher", "dsworker")

LAUNCH_ID_VAR = "MONOLITH_LAUNCH_ID"
"""Set by a launcher to the same value for every process of one launch of a job, new for each launch
(`monolith local`/`ray`: a random id; Kubernetes: the worker Job's uid). Workers scope their barriers with
it, so arrivals left on a still-running PS by an earlier launch never count for this one."""


@dataclass(frozen=True)
class ClusterSpec:
    """Addresses of every role's replicas plus this process's role and index."""

    roles: Mapping[str, tuple[str, ...]]
    task_type: str
    task_index: int
    bind_port: int = 0
    source: str = "explicit"
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        roles = {r.lower(): tuple(addrs) for r, addrs in self.roles.items() if addrs}
        object.__setattr__(self, "roles", roles)
        object.__setattr__(self, "task_type", self.task_type.lower())
        for role, addrs in roles.items():
            for i, addr in enumerate(addrs):
                split_addr(addr, f"{self.source}: {role}[{i}]")
        if self.task_type not in roles:
            raise MLPEnvError(
                f"{self.source}: this process's role {self.task_type!r} is not among the job's roles {sorted(roles)}"
            )
        if not 0 <= self.task_index < len(roles[self.task_type]):
            raise MLPEnvError(
                f"{self.source}: index {self.task_index} is out of range for role {self.task_type!r} "
                f"with {len(roles[self.task_type])} replicas"
            )
        if not self.bind_port:
            object.__setattr__(self, "bind_port", split_addr(self.own_address)[1])

    def num(self, role: str) -> int:
        return len(self.roles.get(role.lower(), ()))

    def addresses(self, role: str) -> list[str]:
        return list(self.roles.get(role.lower(), ()))

    def address(self, role: str, index: int) -> str:
        addrs = self.roles.get(role.lower(), ())
        if not 0 <= index < len(addrs):
            raise MLPEnvError(f"{self.source}: no {role}:{index} in this job ({len(addrs)} {role} replicas)")
        return addrs[index]

    @property
    def own_address(self) -> str:
        return self.roles[self.task_type][self.task_index]

    @property
    def is_chief(self) -> bool:
        return self.task_type == "worker" and self.task_index == 0

    @property
    def name(self) -> str:
        """`role:index`, how logs and errors name this process."""
        return f"{self.task_type}:{self.task_index}"

    def dispatcher_target(self) -> str | None:
        """`grpc://host:port` of the tf.data service dispatcher, or None without one."""
        return f"grpc://{self.address('dispatcher', 0)}" if self.num("dispatcher") else None

    def to_tf_config(self) -> dict:
        """The `TF_CONFIG` form (workers as a plain `worker` list; worker 0 is the chief)."""
        return {"cluster": {r: list(a) for r, a in self.roles.items()},
                "task": {"type": self.task_type, "index": self.task_index}}

    @classmethod
    def from_mlp_env(cls, env: MLPEnv | None = None) -> ClusterSpec:
        env = MLPEnv() if env is None else env
        if not env.role:
            raise MLPEnvError("MLP_ROLE is not set (expected one of PS, WORKER, DISPATCHER, DSWORKER)")
        if not env.all_roles:
            raise MLPEnvError("no MLP_<ROLE>_NUM variable is set (expected e.g. MLP_PS_NUM=2, MLP_WORKER_NUM=2)")
        roles: dict[str, tuple[str, ...]] = {}
        for role, _ in sorted(env.all_roles.items()):
            addrs = []
            for i in range(env.num_replicas(role)):
                addr = env.get_addr(role, i)
                if addr is None:
                    missing = env.host_var(role, i) if env.get_host(role, i) is None else env.port_var(role, i)
                    raise MLPEnvError(f"{missing} is not set (needed for {role.lower()}:{i})")
                addrs.append(addr)
            roles[role.lower()] = tuple(addrs)
        extra = {k: v for k, v in (("framework", env.framework), ("log_path", env.log_path)) if v}
        return cls(roles, env.role.lower(), env.index, bind_port=env.port, source="MLP_* environment", extra=extra)

    @classmethod
    def from_tf_config(cls, tf_config: str | Mapping) -> ClusterSpec:
        if isinstance(tf_config, str):
            try:
                tf_config = json.loads(tf_config)
            except json.JSONDecodeError as exc:
                raise MLPEnvError(f"TF_CONFIG is not valid JSON: {exc}") from None
        if not isinstance(tf_config, Mapping):
            raise MLPEnvError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
        cluster, task = tf_config.get("cluster"), tf_config.get("task")
        if not isinstance(cluster, Mapping) or not cluster:
            raise MLPEnvError("TF_CONFIG.cluster is missing or empty (expected {'ps': [...], 'worker': [...]})")
        if not isinstance(task, Mapping) or "type" not in task:
            raise MLPEnvError("TF_CONFIG.task is missing or has no 'type' (expected {'type': 'worker', 'index': 0})")
        roles = {role.lower(): _tf_config_addresses(role, addrs) for role, addrs in cluster.items()}
        chief = roles.pop("chief", ())
        if len(chief) > 1:
            raise MLPEnvError(f"TF_CONFIG.cluster.chief has {len(chief)} entries; at most one is allowed")
        roles["worker"] = tuple(chief) + roles.get("worker", ())
        task_type = str(task["type"]).lower()
        try:
            index = int(task.get("index", 0))
        except (TypeError, ValueError):
            raise MLPEnvError(f"TF_CONFIG.task.index={task.get('index')!r} is not an integer") from None
        if task_type == "chief":
            task_type, index = "worker", 0
        elif task_type == "worker" and chief:
            index += 1
        return cls(roles, task_type, index, source="TF_CONFIG")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> ClusterSpec:
        """`MLP_*` when `MLP_ROLE` is set, else `TF_CONFIG`; an error naming both when neither is."""
        environ = os.environ if environ is None else environ
        if environ.get("MLP_ROLE", "").strip("\"' "):
            return cls.from_mlp_env(MLPEnv(environ))
        if environ.get("TF_CONFIG", "").strip():
            return cls.from_tf_config(environ["TF_CONFIG"])
        raise MLPEnvError("neither MLP_ROLE nor TF_CONFIG is set: cannot tell this process's role")


def _tf_config_addresses(role: str, addrs: object) -> tuple[str, ...]:
    """A role's addresses in TF_CONFIG: a list, or the sparse form {index: addr}."""
    if isinstance(addrs, Mapping):
        addrs = [addrs[k] for k in sorted(addrs, key=int)]
    if not isinstance(addrs, list | tuple) or not all(isinstance(a, str) for a in addrs):
        raise MLPEnvError(f"TF_CONFIG.cluster.{role} must be a list of 'host:port' strings, got {addrs!r}")
    return tuple(addrs)


def mlp_environment(roles: Mapping[str, list[tuple[str, int]]], role: str, index: int) -> dict[str, str]:
    """The `MLP_*` variables a scheduler would give replica `index` of `role` (used by our launchers)."""
    env: dict[str, str] = {}
    for name, hosts in roles.items():
        up = name.upper()
        env[f"MLP_{up}_NUM"] = str(len(hosts))
        env[f"MLP_{up}_ALL_HOSTS"] = env[f"MLP_{up}_ALL_PRIMARY_HOSTS"] = ",".join(h for h, _ in hosts)
        env[f"MLP_{up}_ALL_ADDRS"] = env[f"MLP_{up}_ALL_PRIMARY_ADDRS"] = ",".join(format_addr(h, p) for h, p in hosts)
        for i, (host, port) in enumerate(hosts):
            env[f"MLP_{up}_{i}_HOST"] = env[f"MLP_{up}_{i}_PRIMARY_HOST"] = host
            env[f"MLP_{up}_{i}_PORT"] = str(port)
    host, port = roles[role][index]
    env.update(MLP_ROLE=role.upper(), MLP_ROLE_INDEX=str(index), MLP_PORT=str(port), YARN_INET_ADDR=host)
    return env
