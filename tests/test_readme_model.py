"""The README's model example works as written: its code blocks are read from README.md and run."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import REPO

pytestmark = pytest.mark.slow

MONOLITH = Path(sys.executable).parent / "monolith"  # the console script `pip install -e .` made


def readme_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def block(language: str, first_line: str) -> str:
    found = [code for lang, code in readme_blocks() if lang == language and code.startswith(first_line)]
    assert len(found) == 1, f"README needs exactly one {language} block starting with {first_line!r}"
    return found[0]


def commands(prefix: str, tmp_path: Path) -> list[list[str]]:
    """The README's `monolith ...` lines starting with `prefix`, with its /tmp paths moved into tmp_path."""
    text = block("bash", "# in the directory holding mymodel.py").replace("/tmp/", f"{tmp_path}/")
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.startswith(prefix)]


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "mymodel.py").write_text(block("python", "# mymodel.py"))
    return tmp_path


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))  # the model is found only because it is in the cwd
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_readme_model_trains_in_one_process_with_the_console_script(workdir):
    assert MONOLITH.exists(), "run `make setup` (it installs the `monolith` command)"
    (argv,) = commands("monolith train", workdir)
    done = run([str(MONOLITH), *argv[1:]], workdir, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = re.search(r"eval at global step 400: (\{.*\})", done.stderr)
    assert metrics, done.stderr[-3000:]
    assert json.loads(metrics.group(1).replace("'", '"'))["ctr_auc"] > 0.7


def test_readme_model_trains_on_two_ps_and_two_workers(workdir):
    (argv,) = commands("monolith local", workdir)
    done = run([str(MONOLITH), *argv[1:]], workdir, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:]
    summary = json.loads((workdir / "click-2x2" / "summary.json").read_text())
    assert summary["global_step"] == summary["eval"]["global_step"] == 401
    assert summary["num_ps"] == 2 and summary["num_workers"] == 2 and summary["auc"]["ctr"] > 0.7


def test_readme_estimator_api_block(workdir):
    code = block("python", "from mymodel import ClickModel").replace("/tmp/", f"{workdir}/")
    done = run([sys.executable, "-c", code], workdir, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    auc, prediction = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert float(auc) > 0.7 and "'ctr'" in prediction
