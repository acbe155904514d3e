"""The project installs as one package with a `monolith` command."""
import subprocess
import sys
from pathlib import Path

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


def test_free_port_is_outside_the_range_the_os_gives_client_connections(monkeypatch):
    """A port from the ephemeral range can be taken as a connection's source port before the server binds it."""
    import socket

    from services import ports

    low = ports._ephemeral_low()
    assert all(ports._LOWEST <= free_port() < low for _ in range(20))
    with socket.socket() as taken:  # a listening port is never handed out
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = iter([taken.getsockname()[1] - ports._LOWEST, 7])
        monkeypatch.setattr(ports.secrets, "randbelow", lambda _n: next(picks))
        assert free_port() == ports._LOWEST + 7


def _option_help(capsys, monkeypatch, command: str, option: str) -> str:
    """The help text of `option` in `monolith <command> --help` (one line each: no wrapping)."""
    monkeypatch.setenv("COLUMNS", "2000")
    try:
        main([command, "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    entries: list[str] = []
    for line in out.split("options:", 1)[1].splitlines():  # an option's help may start on the next line
        if line.startswith("  -"):
            entries.append(line.strip())
        elif entries and line.strip():
            entries[-1] += " " + line.strip()
    found = [e for e in entries if e.startswith(f"{option} ")]
    assert len(found) == 1, out
    return found[0].split(None, 2)[2]


def test_every_max_steps_help_says_it_is_the_global_step(capsys, monkeypatch):
    from worker.train_main import MAX_STEPS_HELP

    for command in ("local", "ray", "run", "train"):
        text = _option_help(capsys, monkeypatch, command, "--max-steps")
        assert "final global step" in text and "not a per-worker count" in text, (command, text)
        assert "each worker" not in text, (command, text)
    readme = " ".join(Path("README.md").read_text().split())
    assert "global step" in MAX_STEPS_HELP and "`max_steps` is the job's final global step" in readme


def test_train_has_its_own_eval_batch_size_flag(capsys, monkeypatch):
    assert "eval unless --eval-batch-size" in _option_help(capsys, monkeypatch, "train", "--batch-size")
    assert "eval batch size" in _option_help(capsys, monkeypatch, "train", "--eval-batch-size")
