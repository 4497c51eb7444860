"""The shipped profiles: they load, they are physically plausible, they are reproducible
from their derivation, and the loader and CLI treat names and paths correctly."""

from __future__ import annotations

import json

import pytest
import yaml

from kubetier.policy import latency_cli, profile_derivation
from kubetier.policy.latency import (
    DEFAULT_PROFILE,
    LatencyModel,
    ProfileError,
    list_profiles,
    load_profile,
)


def test_default_profile_is_shipped():
    assert DEFAULT_PROFILE in list_profiles()
    assert load_profile(DEFAULT_PROFILE).name == DEFAULT_PROFILE


@pytest.mark.parametrize("name", list_profiles())
def test_shipped_profile_is_plausible(name):
    m = load_profile(name)
    assert m.sources, "every shipped profile cites its sources"
    assert m.kv_capacity_tokens >= 50_000
    # Decode at batch 1 is bounded below by reading the weights once: a few ms at least.
    assert 0.002 < m.decode_iteration_s(1, 0) < 0.1
    # Batching is the point of continuous batching: 256 sequences cost far less than
    # 256 separate steps.
    assert m.decode_iteration_s(256, 0) < 10 * m.decode_iteration_s(1, 0)
    # A full KV cache costs more than an empty one.
    assert m.decode_iteration_s(64, m.kv_capacity_tokens) > m.decode_iteration_s(64, 0)
    # Prefill throughput beyond memory-bound sizes: thousands of tokens per second.
    assert 2048 / m.prefill_s(2048) > 5_000
    assert m.idle_watts < m.power_watts(1, 0) <= m.power_watts(256, 0) <= m.tdp_watts
    assert m.power_watts(0, m.max_num_batched_tokens) >= m.power_watts(1, 0)


@pytest.mark.parametrize("name", list(profile_derivation.SETUPS))
def test_shipped_yaml_matches_its_derivation(name):
    assert name in list_profiles()
    assert profile_derivation.main(["--check", name]) == 0, (
        "regenerate with `python -m kubetier.policy.profile_derivation --write`"
    )


def test_every_shipped_profile_has_a_derivation():
    assert set(list_profiles()) <= set(profile_derivation.SETUPS)


def test_load_profile_from_path(tmp_path):
    d = load_profile(DEFAULT_PROFILE).to_dict()
    d["name"] = "custom"
    p = tmp_path / "custom.yaml"
    p.write_text(yaml.safe_dump(d))
    m = load_profile(str(p))
    assert m.name == "custom"
    assert m.decode_iteration_s(64, 1000) == load_profile(DEFAULT_PROFILE).decode_iteration_s(64, 1000)


def test_load_profile_errors_name_the_file_and_field(tmp_path):
    with pytest.raises(ProfileError, match="no such built-in profile"):
        load_profile("llama-9000")
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    d = load_profile(DEFAULT_PROFILE).to_dict()
    d["maxNumSeqs"] = "many"
    bad.write_text(yaml.safe_dump(d))
    with pytest.raises(ProfileError, match=r"bad.yaml.*maxNumSeqs"):
        load_profile(str(bad))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(str(broken))


def test_cli_list_show_validate(capsys, tmp_path):
    assert latency_cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in list_profiles():
        assert name in out
    assert latency_cli.main(["show", DEFAULT_PROFILE]) == 0
    shown = capsys.readouterr().out
    assert "KV capacity" in shown and "vllm 0.21.0" in shown and "request overhead 7.5 ms" in shown
    assert latency_cli.main(["show", DEFAULT_PROFILE, "-o", "json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kvCapacityTokens"] == load_profile(DEFAULT_PROFILE).kv_capacity_tokens
    assert latency_cli.main(["show", DEFAULT_PROFILE, "-o", "yaml"]) == 0
    assert LatencyModel.from_dict(yaml.safe_load(capsys.readouterr().out)).name == DEFAULT_PROFILE
    assert latency_cli.main(["show", "nope"]) == 1
    assert "no such built-in profile" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    assert latency_cli.main(["validate", str(bad)]) == 1
    assert "kvCapacityTokens" in capsys.readouterr().err


def test_derivation_physics():
    d = profile_derivation
    assert d.LLAMA_31_8B.kv_bytes_per_token == 128 * 1024  # 32 layers x 8 KV heads x 128 x K,V x bf16
    assert d.LLAMA_31_70B.kv_bytes_per_token == 320 * 1024
    h100_8b, h100_70b = d.SETUPS["llama-3.1-8b-h100"], d.SETUPS["llama-3.1-70b-h100-tp4"]
    # TP4 splits weights and KV across four GPUs.
    assert h100_70b.resident_weight_bytes == pytest.approx(2 * 70.55e9 / 4)
    assert h100_70b.kv_bytes_per_token_per_gpu == 80 * 1024
    # Batch-1 decode is the weight read plus fixed costs: never faster than the roofline.
    roofline = h100_8b.streamed_weight_bytes / d.H100_SXM.hbm_bytes_per_s
    assert roofline < h100_8b.decode_s(1, 0) < 1.25 * roofline + 1e-3
    # Large batches turn compute-bound: 512 sequences cost more than the weight read.
    assert h100_8b.decode_s(512, 0) > h100_8b.decode_s(1, 0) * 1.5
    # Prefill grows ~linearly once compute-bound (plus the quadratic attention term).
    assert 1.9 < h100_8b.prefill_iteration_s(4096) / h100_8b.prefill_iteration_s(2048) < 2.2
    # The A100 has less bandwidth and compute than the H100: slower everywhere.
    a100 = d.SETUPS["llama-3.1-8b-a100"]
    for b in (1, 64, 256):
        assert a100.decode_s(b, 100_000) > h100_8b.decode_s(b, 100_000)
    assert a100.prefill_iteration_s(2048) > h100_8b.prefill_iteration_s(2048)
    # Power: idle < decode < prefill <= TDP, per GPU of the group.
    for s in d.SETUPS.values():
        g = s.gpu
        assert g.idle_watts * s.tp < s.decode_watts(1) < s.decode_watts(256) <= s.prefill_watts() <= g.tdp_watts * s.tp


def test_derivation_cli_check_detects_drift(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(profile_derivation, "_profiles_dir", lambda: tmp_path)
    assert profile_derivation.main(["--check", DEFAULT_PROFILE]) == 1  # missing file
    assert profile_derivation.main(["--write", DEFAULT_PROFILE]) == 0
    assert profile_derivation.main(["--check", DEFAULT_PROFILE]) == 0
    f = tmp_path / f"{DEFAULT_PROFILE}.yaml"
    f.write_text(f.read_text().replace("maxNumSeqs: 256", "maxNumSeqs: 255"))
    assert profile_derivation.main(["--check", DEFAULT_PROFILE]) == 1
    assert profile_derivation.main(["no-such-setup"]) == 2
