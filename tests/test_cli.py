"""The `kubetier` command contract: every subcommand exists and answers --help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kubetier.cli import SUBCOMMANDS, main


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help(name):
    # A fresh interpreter per subcommand: --help must not need a cluster, a GPU or a
    # running server, and argparse exits 0 after printing usage.
    proc = subprocess.run(
        [sys.executable, "-m", "kubetier.cli", name, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage" in proc.stdout.lower()


def test_router_refuses_a_port_out_of_range(capsys):
    # The OS would otherwise bind the port modulo 65536.
    from kubetier.router.main import build_parser as router_parser

    with pytest.raises(SystemExit) as exc:
        router_parser().parse_args(["--port", "70000"])
    assert exc.value.code == 2 and "--port" in capsys.readouterr().err
