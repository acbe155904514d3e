"""Every log line names the process's role and index, and a host's own logging never prints a line twice."""
from __future__ import annotations

import subprocess
import sys

from tests.processes import REPO


def _stderr_of(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         check=True)
    return out.stderr.splitlines()


def test_a_role_process_gets_a_handler_naming_its_role():
    lines = _stderr_of("import logging; from services import role_logging\n"
                       "role_logging.configure('ps', 3); role_logging.configure('ps', 3)\n"
                       "logging.getLogger('x').info('hello')")
    assert len(lines) == 1 and "[ps:3] x: hello" in lines[0], lines


def test_a_host_configured_logger_keeps_its_handler_and_gets_each_line_once():
    lines = _stderr_of("import logging; logging.basicConfig(format='host %(role)s/%(index)s %(message)s')\n"
                       "from services import role_logging; role_logging.configure('worker', 1)\n"
                       "logging.getLogger('x').info('hello')")
    assert lines == ["host worker/1 hello"], lines
