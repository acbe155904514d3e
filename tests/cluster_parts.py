"""The parts an end-to-end cluster test needs from the PS and worker issues (skip until they exist)."""
from __future__ import annotations

import pytest

PARTS = {
    "ps.__main__": "needs the PS server (ps/__main__.py, PS service issue)",
    "ps.client.client": "needs the PS client (ps/client/client.py, PS service issue)",
    "worker.train_main": "needs `monolith train` (worker/train_main.py, worker issue)",
    "worker.models.ffm": "needs the FFM test model (worker/models/ffm.py, worker issue)",
}


def require(*modules: str) -> None:
    """`pytest.importorskip` each module (default: all of them), with the reason naming its issue."""
    for module in modules or PARTS:
        pytest.importorskip(module, reason=PARTS[module])
