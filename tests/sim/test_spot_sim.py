"""The spot evaluation on the fleet simulator: notices, migration, fallback, cost."""

import pytest

from kubetier.policy.spot import SpotConfig
from kubetier.sim.scenario import parse_scenario
from kubetier.sim.spot import AvailabilityEvent, Prices, preemption_storm, read_availability, replicate, stretch
from kubetier.sim.spot_compare import compare_spot


def _scenario(output_tokens: int, mean_output_tokens: int | None = None) -> object:
    tiers = [
        {"name": "tight", "ttftMs": 1000, "tpotMs": 40, "attainmentPercent": 90, "priority": 100},
        {"name": "loose", "ttftMs": 5000, "tpotMs": 150, "attainmentPercent": 90, "priority": 10},
    ]
    if mean_output_tokens is not None:
        tiers = [{**t, "meanOutputTokens": mean_output_tokens} for t in tiers]
    return parse_scenario(
        {
            "name": "spot-test",
            "seed": 3,
            "profile": "llama-3.1-8b-h100",
            "tiers": tiers,
            "workload": {
                "durationS": 240,
                "sources": [
                    {
                        "synthetic": {
                            "arrival": "poisson",
                            "rate": 2.0,
                            "prompt": {"dist": "fixed", "mean": 256},
                            "output": {"dist": "fixed", "mean": output_tokens},
                        },
                        "mix": {"tight": 0.5, "loose": 0.5},
                    }
                ],
            },
            "fleet": {"servers": {"tight": 2, "loose": 2}, "modelLoadS": 20},
        }
    )


# Two spot nodes for the loose tier (one each for the tight tier's spot part); at 100 s one
# is preempted and a new one is available from 150 s.
AVAILABILITY = [
    AvailabilityEvent(0.0, "add", ("a", "b", "c", "d")),
    AvailabilityEvent(100.0, "remove", ("a",)),
    AvailabilityEvent(150.0, "add", ("e",)),
]


def _compare(sc, notice_s: float, **options):
    # availability as absolute times: a stretch to the window would move the events
    return compare_spot(
        sc,
        AVAILABILITY,
        floors={"tight": 1},
        rate_scale=1.0,
        notice_s=notice_s,
        prices=Prices(4.0, 1.6),
        cfg=SpotConfig(fallback_after_s=30, return_after_s=60, over_provision=0),
        traces_dir=None,
        **options,
    )


def _rows(output_tokens: int, notice_s: float):
    rows = _compare(_scenario(output_tokens), notice_s)
    return {r.outcome.policy: r for r in rows}


@pytest.mark.slow
def test_long_streams_migrate_under_kubetier_and_break_without_it():
    # 3,000-token answers run ~30 s or more: they outlive a 5 s notice.
    rows = _rows(output_tokens=3000, notice_s=5.0)
    assert set(rows) == {"on-demand", "naive-spot", "skyserve", "kubetier-drain", "kubetier"}
    assert rows["on-demand"].outcome.preemptions == 0
    for policy in ("naive-spot", "skyserve", "kubetier-drain", "kubetier"):
        assert rows[policy].outcome.preemptions >= 1
    assert rows["naive-spot"].outcome.broken_streams > 0
    assert rows["skyserve"].outcome.broken_streams > 0  # drained, but the node went before they ended
    assert rows["kubetier"].outcome.broken_streams == 0
    assert rows["kubetier"].outcome.migrated_streams > 0
    assert rows["kubetier-drain"].outcome.broken_streams == 0
    # Every request is accounted for under every policy (nothing lost silently).
    counts = {p: r.run.requests for p, r in rows.items()}
    assert len(set(counts.values())) == 1, counts
    # Spot is cheaper than on demand for the same work.
    assert rows["kubetier"].outcome.cost_usd < rows["on-demand"].outcome.cost_usd
    assert rows["kubetier"].outcome.gpu_hours_spot > 0


def test_short_streams_finish_inside_the_notice():
    rows = _rows(output_tokens=50, notice_s=30.0)
    assert rows["kubetier"].outcome.broken_streams == 0
    assert rows["skyserve"].outcome.broken_streams == 0
    assert rows["naive-spot"].outcome.preemptions >= 1


def test_availability_helpers(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('[0, "add", {"nodes": ["n0", "n1"]}]\n[60000, "remove", {"nodes": ["n1"]}]\n[90000, "DONE", {}]\n')
    events = read_availability(path)
    assert events == [AvailabilityEvent(0.0, "add", ("n0", "n1")), AvailabilityEvent(60.0, "remove", ("n1",))]
    doubled = replicate(events, 2)
    assert doubled[0].nodes == ("n0#0", "n0#1", "n1#0", "n1#1") and doubled[1].nodes == ("n1#0", "n1#1")
    assert stretch(events, 600)[1].t_s == pytest.approx(540.0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[0, "explode", {}]\n')
    with pytest.raises(ValueError, match="unknown event kind"):
        read_availability(bad)
    storm = preemption_storm(10, 3600, storms=2, lost_fraction=0.5, recover_s=300, seed=1)
    assert sum(1 for e in storm if e.kind == "remove") == 2
    assert all(len(e.nodes) == 5 for e in storm if e.kind == "remove")


def test_deadline_aware_draining_keeps_admitting_only_what_finishes_in_time():
    # 50-token answers: the noticed server (the tight tier's) keeps taking new requests
    # while a long one of its tier (1 s + 99 x 40 ms = 4.96 s) ends 5 s before the node goes.
    sc = _scenario(50, mean_output_tokens=50)

    def run(notice_s, policies):
        rows = _compare(sc, notice_s, policies=policies)
        return {r.outcome.policy: r.outcome for r in rows}

    by = run(60.0, ("kubetier-drain", "kubetier"))
    assert by["kubetier-drain"].admitted_after_notice_s and set(by["kubetier-drain"].admitted_after_notice_s) == {0.0}
    # 60 - 5 (margin) - 4.96 = 50.04 s more of admission
    admitted = by["kubetier"].admitted_after_notice_s
    assert admitted and admitted == [pytest.approx(50.04, abs=0.01)] * len(admitted)
    assert by["kubetier"].broken_streams == 0
    # a notice shorter than margin plus a long request leaves no room: drained at once
    assert set(run(9.0, ("kubetier",))["kubetier"].admitted_after_notice_s) == {0.0}
