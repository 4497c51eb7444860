"""`kubetier engine-sim` as a command: flags, refusals, start and clean stop."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from kubetier.engine_sim.main import build_parser, main
from kubetier.localdev.processes import free_loopback_port, kubetier_command, start_process, stop_process


def test_defaults_match_the_contract():
    args = build_parser().parse_args([])
    assert (args.host, args.port, args.profile, args.time_scale) == ("127.0.0.1", 8000, "llama-3.1-8b-h100", 1.0)
    assert args.model_load_seconds == 0.0 and args.slowdown == 1.0 and args.fail_fraction == 0.0


@pytest.mark.parametrize(
    "argv",
    [
        ["--time-scale", "0"],
        ["--fail-fraction", "1.5"],
        ["--abort-after-tokens", "0"],
        ["--slowdown", "-1"],
        ["--model-load-seconds", "-2"],
        ["--max-num-seqs", "0"],
        ["--port", "99999"],
        ["--port", "-1"],
    ],
)
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_unknown_profile_is_refused_with_its_name(capsys):
    assert main(["--profile", "no-such-profile"]) == 2
    assert "no-such-profile" in capsys.readouterr().err


def test_max_num_seqs_above_token_budget_is_refused(capsys):
    assert main(["--max-num-seqs", "100000", "--port", "0"]) == 2
    assert "maxNumBatchedTokens" in capsys.readouterr().err


def test_process_serves_and_stops_on_sigterm():
    port = free_loopback_port()
    proc = start_process(
        kubetier_command("engine-sim", "--port", str(port), "--model-load-seconds", "0.5"), stderr=subprocess.PIPE
    )
    try:
        codes = []
        for _ in range(100):
            try:
                codes.append(httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code)
            except httpx.TransportError:
                pass
            if codes and codes[-1] == 200:
                break
            time.sleep(0.05)
        assert 503 in codes and codes[-1] == 200
    finally:
        rc = stop_process(proc, timeout=10)
    assert rc == 0
    assert b"127.0.0.1" in proc.stderr.read()  # the startup line says where it listens
