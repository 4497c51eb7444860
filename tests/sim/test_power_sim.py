"""Power-capped oversubscription in the fleet simulator: the control loop around the fleet, on a
small synthetic scenario (bursty gamma arrivals, long prompts: prefill near TDP), so every
figure below comes from a run, and the run is seconds long."""

from __future__ import annotations

import json

import pytest

from kubetier.policy.latency import load_profile
from kubetier.policy.power_cap import capped_model
from kubetier.policy.routing import TierSLO
from kubetier.sim.engine import SimConfig, Simulator
from kubetier.sim.power import PowerSimSpec, compare_power, split_servers, table
from kubetier.sim.power_cli import main as power_main
from kubetier.sim.scenario import load_scenario

SCENARIO = """
name: power-test
seed: 3
profile: llama-3.1-8b-h100
tiers:
  - {name: interactive, ttftMs: 600, tpotMs: 30, attainmentPercent: 90, priority: 100, meanOutputTokens: 100}
  - {name: standard, ttftMs: 2000, tpotMs: 60, attainmentPercent: 90, priority: 50, meanOutputTokens: 200}
  - {name: batch, ttftMs: 10000, tpotMs: 150, attainmentPercent: 90, priority: 10, meanOutputTokens: 200}
workload:
  durationS: 90
  sources:
    - synthetic:
        arrival: gamma
        rate: 120
        cv: 3
        prompt: {dist: lognormal, mean: 1500, sd: 1200, min: 16, max: 8000}
        output: {dist: lognormal, mean: 150, sd: 100, min: 1, max: 800}
      mix: {interactive: 0.3, standard: 0.35, batch: 0.35}
fleet:
  servers: {interactive: 4, standard: 4, batch: 4}
  modelLoadS: 60
policies: [kubetier]
"""


@pytest.fixture(scope="module")
def scenario_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("power") / "power-test.yaml"
    p.write_text(SCENARIO)
    return str(p)


@pytest.fixture(scope="module")
def result(scenario_path):
    return compare_power(PowerSimSpec(scenario=scenario_path, rate_scale=1.0, budget_servers=9))


def test_split_servers_keeps_the_scenario_proportions(scenario_path):
    sc = load_scenario(scenario_path)
    assert split_servers(sc, 12) == ["interactive"] * 4 + ["standard"] * 4 + ["batch"] * 4
    assert split_servers(sc, 9) == ["interactive"] * 3 + ["standard"] * 3 + ["batch"] * 3
    s = split_servers(sc, 10)
    assert len(s) == 10 and s.count("interactive") == 4  # the remainder goes by tier order


def test_arms_have_the_promised_fleets_and_loads(result):
    arms = {a["arm"]: a for a in result["arms"]}
    assert arms["nominal"]["servers"] == 9 and arms["nominal"]["load_scale"] == 1.0
    for arm in ("oversubscribed-uncapped", "uniform", "polca"):
        assert arms[arm]["servers"] == 12
        assert arms[arm]["load_scale"] == pytest.approx(12 / 9, abs=1e-3)
    assert result["budgetWatts"] == 9 * 700.0


def test_uncapped_oversubscription_exceeds_the_budget_and_capping_prevents_it(result):
    arms = {a["arm"]: a for a in result["arms"]}
    assert arms["oversubscribed-uncapped"]["above_budget_1s_s"] > 0
    assert arms["oversubscribed-uncapped"]["cap_changes"] == 0
    for arm in ("uniform", "polca"):
        assert arms[arm]["cap_changes"] > 0
        assert arms[arm]["above_budget_1s_s"] < arms["oversubscribed-uncapped"]["above_budget_1s_s"]


def test_polca_caps_the_low_tier_first_and_the_tight_tier_least(result):
    polca = next(a for a in result["arms"] if a["arm"] == "polca")
    capped_seconds = {t: 0 for t in ("interactive", "standard", "batch")}
    first = None
    for point in polca["series"]:
        for tier, n in point["cappedByTier"].items():
            capped_seconds[tier] += n
            if first is None:
                first = tier
    assert first == "batch"
    assert capped_seconds["batch"] > capped_seconds["interactive"]
    assert capped_seconds["standard"] > capped_seconds["interactive"]
    # The tight tier is capped by the brake only under POLCA; uniform capping caps it at
    # the cap threshold. (Which one attains more depends on the load: on this overloaded
    # synthetic scenario neither meets its target; the trace comparison is in docs/power.md.)
    assert all(p["level"] == "braking" for p in polca["series"] if p["cappedByTier"].get("interactive"))
    uniform = next(a for a in result["arms"] if a["arm"] == "uniform")
    assert any(p["level"] == "capping" and p["cappedByTier"].get("interactive") for p in uniform["series"])


def test_table_and_verdict_report_every_arm(result):
    text = table(result)
    for arm in ("nominal", "oversubscribed-uncapped", "uniform", "polca"):
        assert arm in text
    assert result["verdict"]["tightTier"] == "interactive"
    assert result["verdict"]["polca"]["serversGainPercent"] == pytest.approx(33.3)


def test_set_model_makes_the_router_see_a_slower_server():
    model = load_profile("llama-3.1-8b-h100")
    sc = load_scenario("azure-by-source")
    sim = Simulator(SimConfig(tiers=[TierSLO.from_api(t) for t in sc.tiers], server_tiers=["interactive"], model=model))
    srv = sim.servers[0]
    capped = capped_model(model, 315)
    sim.set_model(srv, capped)
    assert srv.model is capped and srv.iter_s == capped.iteration_s
    assert sim.policy._servers[srv.sid].load.model is capped


def test_cli_prints_table_and_json(scenario_path, capsys, tmp_path):
    rc = power_main(
        ["--scenario", scenario_path, "--duration-s", "20", "--arms", "nominal,polca", "--output", str(tmp_path)]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "polca" in out
    doc = json.loads(out[out.index("{") :])
    assert [a["arm"] for a in doc["arms"]] == ["nominal", "polca"]
    assert (tmp_path / "power-result.json").is_file() and (tmp_path / "power-domain.png").is_file()
    assert power_main(["--scenario", scenario_path, "--arms", "nope"]) == 2


def test_sweep_runs_every_arm_per_case_and_threshold_setting(scenario_path, capsys, tmp_path):
    out_json = tmp_path / "sweep.json"
    rc = power_main(
        [
            "sweep",
            "--cases",
            f"{scenario_path}@1",
            "--thresholds",
            "90/80/97,85/75/92",
            "--duration-s",
            "20",
            "--output",
            str(out_json),
        ]
    )
    assert rc == 0
    rows = json.loads(out_json.read_text())
    # nominal and uncapped once, uniform and polca once per setting
    assert [(r["arm"], r["thresholds"]) for r in rows] == [
        ("nominal", "-"),
        ("oversubscribed-uncapped", "-"),
        ("uniform", "90/80/97"),
        ("polca", "90/80/97"),
        ("uniform", "85/75/92"),
        ("polca", "85/75/92"),
    ]
    nominal = rows[0]
    assert nominal["tightTier"] == "interactive" and nominal["tightDeltaPp"] == 0
    for r in rows[2:]:
        assert r["servers"] == 12 and r["meetsGoalSampled"] == (r["tightDeltaPp"] >= -0.5 and r["aboveBudgetS"] == 0.0)
    assert "polca" in capsys.readouterr().out
    assert power_main(["sweep", "--thresholds", "90-80-97"]) == 2
    assert power_main(["sweep", "--cases", "no-at-sign"]) == 2
