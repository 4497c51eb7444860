"""`kubetier render`: the README's command on the shipped sample, and the error paths."""

from pathlib import Path

import yaml

from kubetier.operator import render_cli

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"


def test_three_tier_sample_renders_workloads_per_tier(capsys):
    assert render_cli.main([str(SAMPLES / "modelservice-three-tier.yaml")]) == 0
    objs = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = [o["kind"] for o in objs]
    assert "ConfigMap" in kinds and "Deployment" in kinds and "Service" in kinds
    tiers = {o["metadata"]["labels"].get("kubetier.io/tier") for o in objs if o["kind"] == "Service"}
    assert tiers == {"interactive", "standard", "batch"}


def test_missing_file_is_one_line_not_a_traceback(capsys, tmp_path):
    assert render_cli.main([str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"kubetier render: {tmp_path / 'nope.yaml'}: ") and "No such file" in err


def test_invalid_sample_names_the_field(capsys):
    assert render_cli.main([str(SAMPLES / "invalid" / "modelservice-zero-ttft.yaml")]) == 1
    assert "ttftMs" in capsys.readouterr().err
