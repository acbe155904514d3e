"""Imports run one way: from the launchers down through the roles to the shared plumbing, never back up.

Every import statement of the project (module level or inside a function) is read with `ast`; each
importing unit may only name the units listed for it. docs/architecture.md draws the same picture.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# unit -> units it may import. A unit is a top-level package, or a subpackage / top module of ps and worker.
ALLOWED: dict[str, set[str]] = {
    "protos": set(),
    "services": {"protos"},
    # the parameter server, bottom to top; client and service both speak ps.wire and never import each other
    "ps.errors": set(),
    "ps.config": {"ps.errors"},
    "ps.sharding": set(),
    "ps.kernels": set(),
    "ps.persist": {"ps.errors", "ps.config"},
    "ps.store": {"ps.errors", "ps.config", "ps.sharding", "ps.kernels", "ps.persist"},
    "ps.wire": {"protos", "ps.errors", "ps.config"},
    "ps.service": {"protos", "services", "ps.errors", "ps.config", "ps.sharding", "ps.kernels", "ps.persist",
                   "ps.store", "ps.wire"},
    "ps.client": {"protos", "services", "ps.errors", "ps.config", "ps.sharding", "ps.kernels", "ps.persist",
                  "ps.wire"},
    "ps": {"services", "protos", "ps.*"},  # ps/__init__.py and ps/__main__.py (the shard process)
    "dispatcher": {"services", "protos"},
    # the worker: the model-building library below the training runtime
    "worker.modeling": {"services", "protos", "ps.config", "ps.errors"},  # segment configs are PS configs
    "worker.models": {"protos", "ps.persist", "worker.modeling"},  # crash-safe publication of the data cache
    "worker.runtime": {"services", "protos", "ps.*", "worker.modeling"},
    "worker.export": {"services", "protos", "ps.*", "worker.modeling", "worker.runtime"},
    "worker.model_dump": {"services", "protos", "ps.persist", "worker.modeling", "worker.runtime"},
    "worker": {"services", "protos", "ps.*", "worker.*"},  # worker/model.py (the public API), worker/train_main.py
    "serving": {"services", "protos", "ps.*"},  # a role of its own: never the worker
    "launch": {"services", "protos", "ps", "ps.*", "worker", "worker.*", "dispatcher", "serving"},
}
ROLES_AND_BELOW = ("protos", "services", "ps", "dispatcher", "worker", "serving", "launch")
_SPLIT = {"ps": {"errors", "config", "sharding", "kernels", "persist", "store", "wire", "service", "client"},
          "worker": {"modeling", "models", "runtime", "export", "model_dump"}}


def unit_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] not in ROLES_AND_BELOW:
        return None
    if parts[0] in _SPLIT and len(parts) > 1 and parts[1] in _SPLIT[parts[0]]:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def allowed(src: str, dst: str) -> bool:
    if src == dst:
        return True
    rules = ALLOWED[src]
    return dst in rules or any(r.endswith(".*") and dst.startswith(r[:-1]) for r in rules)


def project_files() -> list[Path]:
    return sorted(p for top in ROLES_AND_BELOW if (REPO / top).is_dir() for p in (REPO / top).rglob("*.py")
                  if "_pb2" not in p.name)


def imports_of(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]  # from ps import kernels
    return out


def module_of(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def test_no_import_runs_upward():
    wrong = []
    for path in project_files():
        src = unit_of(module_of(path))
        for line, name in imports_of(path):
            dst = unit_of(name)
            if dst is not None and not allowed(src, dst):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {src} imports {name} ({dst})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_every_unit_has_a_rule_and_roles_are_folders():
    units = {unit_of(module_of(p)) for p in project_files()}
    assert units <= set(ALLOWED), units - set(ALLOWED)
    for role in ("ps", "worker", "dispatcher", "serving", "services", "launch"):
        assert (REPO / role / "__init__.py").is_file()


@pytest.mark.parametrize("src, dst", [("services", "ps"), ("ps.store", "ps.service"), ("ps.client", "ps.store"),
                                      ("ps.service", "ps.client"), ("worker.modeling", "worker.runtime"),
                                      ("ps", "worker"), ("serving", "worker.runtime"), ("worker.runtime", "launch"),
                                      ("serving", "worker"), ("serving", "worker.export"), ("ps", "serving"),
                                      ("worker.export", "serving"), ("services", "serving")])
def test_the_rules_forbid_upward_arrows(src, dst):
    assert not allowed(src, dst)
