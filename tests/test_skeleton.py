"""The project installs as one package with a `monolith` command."""
import subprocess
import sys

from launch.cli import SUBCOMMANDS, main
from services.ports import free_port


def test_cli_lists_every_role():
    out = subprocess.run([sys.executable, "-m", "launch.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout


def test_unknown_subcommand_is_a_usage_error(capsys):
    try:
        main(["no-such-role"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_free_port_is_bindable():
    import socket

    p = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", p))
