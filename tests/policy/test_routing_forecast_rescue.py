"""The forecast rescue (routing_rescue.forecast_rescue_route, routing.FORECAST_RESCUE).

Hand-checkable on the linear test model: decode step D(b, kv) = 10 + 0.1 (b - 1) +
kv / 10,000 ms; a prompt chunk of n tokens adds 0.1 n ms; maxNumSeqs 100,
maxNumBatchedTokens 1,000.

The tier: TTFT 1 s, TPOT 40 ms, mean output 30 tokens, prompt prior 2,000 tokens, so
the steady refill forecasts 2,000 / 30 = 66.7 prompt tokens per iteration per running
sequence, 6.67 ms of chunk cost per running sequence per token. A server running 8
sequences is forecast at ~10.7 + 1.7 (our 500-token prompt over 30 tokens) + 53.3 =
66 ms per token against a limit of 40 + 0.25 x 1,000 / 30 = 48.3 ms: refused. With
half the forecast (``FORECAST_RESCUE_REFILL``) it is ~39 ms: it passes, and every other
check too (first token ~61 ms of the budget, burst lag ~21 ms of 250 ms). A running
sequence of the tier takes ~30 x 40 ms = 1.2 s to finish, longer than the 0.94 s the
request may wait (1 s minus its 60 ms idle prefill): waiting only ends in a reject.
"""

from __future__ import annotations

import random

from kubetier.policy.routing import RoutingPolicy, ServerLoad, TierSLO
from kubetier.policy.routing_rescue import forecast_rescue_route
from linear_latency_model import MODEL

SHORT_OUT = TierSLO("t", ttft_ms=1000, tpot_ms=40, priority=100, mean_output_tokens=30)


def _policy(*servers: tuple[str, int], tier: TierSLO = SHORT_OUT, **kw) -> RoutingPolicy:
    p = RoutingPolicy([tier], rng=random.Random(1), host_probe_prompt_tokens=2000, ttft_headroom=0.0, rescue=True, **kw)
    for sid, running in servers:
        p.upsert_server(ServerLoad(sid, tier.name, MODEL, running=running))
    return p


def test_the_forecast_alone_refuses_and_waiting_only_ends_in_a_reject():
    p = _policy(("a", 8), forecast_rescue=False)
    # the premise of the hand check: waiting cannot outlast a running sequence
    assert p.traffic["t"].h * 0.040 > 1.0 - p._idle_prefill(SHORT_OUT, 500)
    assert p.decide("t", 500, 0.0).action == "wait"  # the earlier rule
    p.forecast_rescue = True
    d = p.decide("t", 500, 0.0)
    assert (d.action, d.server_id, d.reason, d.spilled) == ("route", "a", "forecast-rescue", False)


def test_the_rescue_takes_the_least_loaded_server_like_the_winning_baseline():
    p = _policy(("a", 8), ("b", 14), ("c", 12), forecast_rescue=True)
    assert p.decide("t", 500, 0.0).server_id == "a"


def test_the_rescue_still_respects_the_work_the_server_holds_now():
    # 20,000 prompt tokens already queued: the burst lags the running sequences ~2 s,
    # far past their 250 ms credit, forecast or not: the request waits.
    p = _policy(forecast_rescue=True)
    p.upsert_server(ServerLoad("a", "t", MODEL, running=8, queued_prefill_tokens=20000))
    assert p.decide("t", 500, 0.0).action == "wait"


def test_no_forecast_rescue_when_waiting_can_still_help():
    # Mean output 10 tokens: a running sequence finishes in ~0.4 s, inside the 0.94 s the
    # request may wait, so it waits for one (the forecast decides, as before).
    short = TierSLO("t", ttft_ms=1000, tpot_ms=40, priority=100, mean_output_tokens=10)
    # (4 running: forecast ~95 ms per token against 65, half of it ~55: the rescue would pass)
    p = _policy(("a", 4), tier=short, forecast_rescue=True)
    assert p.traffic["t"].h * 0.040 < 1.0 - p._idle_prefill(short, 500)
    assert p.decide("t", 500, 0.0).action == "wait"
    # (the server itself would pass without the forecast: it is the condition that holds)
    assert forecast_rescue_route(p, short, 500, 1.0) is not None


def test_the_rescue_still_leaves_room_for_half_the_forecast():
    # 12 running: half the forecast alone is 40 ms per token, with the batch ~53 ms,
    # past the 48.3 ms limit: no rescue, the request waits.
    p = _policy(("a", 12), forecast_rescue=True)
    assert p.decide("t", 500, 0.0).action == "wait"


def test_the_module_flag_is_the_default():
    import kubetier.policy.routing as routing

    assert RoutingPolicy([SHORT_OUT]).forecast_rescue is routing.FORECAST_RESCUE
