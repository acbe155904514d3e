"""numba's kernel cache goes to a user cache directory, never into the sources (issue 11, bug 5)."""
import os
import subprocess
import sys

import pytest

from tests.processes import REPO

KERNEL = "from numba import njit\n\n@njit(cache=True)\ndef twice(x):\n    return 2 * x\n"

SCRIPT = r"""
import logging, sys
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
if sys.argv[1] == "numba-first":
    import numba  # a user may import numba before our package
import ps  # noqa: F401
from ps.store.table import EmbeddingTable
import kernel_mod
assert kernel_mod.twice(21) == 42
EmbeddingTable.from_dict({"dim": 2, "optimizer": {"type": "sgd"}})
"""


@pytest.mark.parametrize("order", ["ps-first", "numba-first"])
def test_kernels_are_cached_under_the_user_cache_dir_when_the_variable_is_unset(tmp_path, order):
    sources = tmp_path / "src"
    sources.mkdir()
    (sources / "kernel_mod.py").write_text(KERNEL)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), PYTHONPATH=os.pathsep.join([str(REPO), str(sources)]))
    done = subprocess.run([sys.executable, "-c", SCRIPT, order], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    cache = tmp_path / "xdg" / "monolith" / "numba"
    assert list(cache.rglob("kernel_mod.twice-*.nbi")), sorted(map(str, tmp_path.rglob("*")))
    assert not list(sources.rglob("*.nbi")) and not list(sources.rglob("*.nbc"))  # nothing beside the sources
    assert f"numba kernel cache {cache} is empty" in done.stderr  # the slow first steps are announced
