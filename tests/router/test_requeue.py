"""Waiting requests are re-decided only when capacity changes in a way that can admit them.

A capacity change on a server asks only the tiers that may use it (its own, and looser
tiers that spill upward onto it), in waiting order, one request at a time, admitting in
place; nothing polls in between. These tests fail if a capacity change decides for a
request that could not use the freed server, if a waiting request is left waiting while
a server could take it, if waiting requests are served out of the waiting order, or if a
request admitted by a capacity change leaks its capacity when its client goes away.
No fleet tick runs here (``fleet.start()`` is not called): every admission below comes
from the capacity change itself.
"""

import asyncio
import time

from kubetier.policy.latency import LatencyModel, load_profile
from kubetier.policy.routing import TierSLO
from kubetier.router.config import ModelSpec, ServerSpec
from kubetier.router.fleet import ModelFleet
from kubetier.router.metrics import RouterMetrics

FAST = TierSLO("fast", ttft_ms=5000, tpot_ms=40, priority=100, mean_output_tokens=16)
SLOW = TierSLO("slow", ttft_ms=5000, tpot_ms=200, priority=10, mean_output_tokens=16)


def _fleet(servers: list[tuple[str, str]], tiers=(FAST, SLOW), **kw) -> ModelFleet:
    d = load_profile("llama-3.1-8b-h100").to_dict()
    d["maxNumSeqs"] = 1  # one request fills a server: capacity is one slot per server
    spec = ModelSpec(
        "m", LatencyModel.from_dict(d), list(tiers), [ServerSpec(sid, "127.0.0.1", 9, t) for sid, t in servers]
    )
    return ModelFleet(spec, RouterMetrics("test"), **kw)


class _Recorder:
    """Which tiers the fleet decided for, in order."""

    def __init__(self, fleet: ModelFleet) -> None:
        self.tiers: list[str] = []
        inner = fleet._decide

        def decide(tier, prompt_tokens, arrival, exclude):
            self.tiers.append(tier)
            return inner(tier, prompt_tokens, arrival, exclude)

        fleet._decide = decide  # type: ignore[method-assign]


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_capacity_change_decides_only_for_tiers_that_may_use_the_server():
    fleet = _fleet([("f", "fast"), ("s", "slow")])
    now = time.monotonic()
    (uf, _), (us, _) = await fleet.acquire("fast", 100, now), await fleet.acquire("slow", 100, now)
    assert (uf.spec.server_id, us.spec.server_id) == ("f", "s")
    waiting_fast = [asyncio.ensure_future(fleet.acquire("fast", 100, time.monotonic())) for _ in range(3)]
    waiting_slow = [asyncio.ensure_future(fleet.acquire("slow", 100, time.monotonic())) for _ in range(3)]
    await _settle()
    assert fleet.metrics.tally("m", "fast").waiting == 3 and fleet.metrics.tally("m", "slow").waiting == 3
    rec = _Recorder(fleet)
    fleet.release("s", 100, 16, prefilled=False)  # the slow server frees: no fast request can use it
    await _settle()
    assert "fast" not in rec.tiers, rec.tiers
    # The head of the slow tier is admitted; the next one is asked once and waits; no more.
    assert rec.tiers == ["slow", "slow"]
    assert waiting_slow[0].done() and (await waiting_slow[0])[0].spec.server_id == "s"
    assert not any(w.done() for w in waiting_slow[1:] + waiting_fast)
    # Nothing polls between capacity changes (the old router re-decided every waiter
    # every 0.2 s): no decision in a quiet half second.
    rec.tiers.clear()
    await asyncio.sleep(0.5)
    assert rec.tiers == []
    # The fast server frees: a fast request (higher priority: first in waiting order) takes it.
    fleet.release("f", 100, 16, prefilled=False)
    await _settle()
    assert rec.tiers[0] == "fast" and waiting_fast[0].done()
    assert (await waiting_fast[0])[0].spec.server_id == "f"
    for w in waiting_fast[1:] + waiting_slow[1:]:
        w.cancel()
    await asyncio.gather(*waiting_fast[1:], *waiting_slow[1:], return_exceptions=True)
    assert fleet.metrics.tally("m", "fast").waiting == 0 and fleet.metrics.tally("m", "slow").waiting == 0


async def test_every_freed_slot_is_taken_at_once_in_waiting_order():
    # Four slow servers full; eight slow requests wait. Three servers free in one go:
    # exactly the three first in waiting order are admitted by the changes themselves.
    fleet = _fleet([(f"s{i}", "slow") for i in range(4)])
    for _ in range(4):
        await fleet.acquire("slow", 100, time.monotonic())
    t0 = time.monotonic()
    waiters = [asyncio.ensure_future(fleet.acquire("slow", 100, t0 + i * 1e-3)) for i in range(8)]
    await _settle()
    for sid in ("s0", "s1", "s2"):
        fleet.release(sid, 100, 16, prefilled=False)
    await _settle()
    assert [w.done() for w in waiters] == [True] * 3 + [False] * 5  # nobody stranded, order kept
    assert sorted(w.result()[0].spec.server_id for w in waiters[:3]) == ["s0", "s1", "s2"]
    # A server that joins (discovery) is capacity too.
    fleet.set_servers([*fleet.spec.servers, ServerSpec("s9", "127.0.0.1", 9, "slow")])
    await _settle()
    assert waiters[3].done() and (await waiters[3])[0].spec.server_id == "s9"
    assert not any(w.done() for w in waiters[4:])
    for w in waiters[4:]:
        w.cancel()
    await asyncio.gather(*waiters[4:], return_exceptions=True)


async def test_a_request_admitted_for_a_client_that_is_cancelled_gives_the_slot_back():
    fleet = _fleet([("s", "slow")])
    await fleet.acquire("slow", 100, time.monotonic())
    first = asyncio.ensure_future(fleet.acquire("slow", 100, time.monotonic()))
    second = asyncio.ensure_future(fleet.acquire("slow", 100, time.monotonic() + 1e-3))
    await _settle()
    fleet.release("s", 100, 16, prefilled=False)  # admits `first` in place ...
    first.cancel()  # ... whose task is cancelled before it runs again
    await asyncio.gather(first, return_exceptions=True)
    await _settle()
    # The slot went back and on to the next in line, not leaked.
    assert second.done() and (await second)[0].spec.server_id == "s"
    load = fleet.policy.server("s")
    assert load is not None and load.running == 1


async def test_a_late_request_of_a_queueing_tier_waits_without_polling():
    late_tier = TierSLO("q", ttft_ms=100, tpot_ms=200, priority=1, mean_output_tokens=16, on_late="queue")
    fleet = _fleet([("s", "q")], tiers=(late_tier,), queue_timeout_s=10.0)
    await fleet.acquire("q", 100, time.monotonic())
    waiters = [asyncio.ensure_future(fleet.acquire("q", 100, time.monotonic())) for _ in range(20)]
    await asyncio.sleep(0.3)  # past their TTFT: queued late
    rec = _Recorder(fleet)
    await asyncio.sleep(0.5)
    assert rec.tiers == []  # the old router asked each of them every 0.2 s: ~50 decisions here
    fleet.release("s", 100, 16, prefilled=False)
    await _settle()
    assert waiters[0].done() and rec.tiers == ["q", "q"]
    for w in waiters[1:]:
        w.cancel()
    await asyncio.gather(*waiters[1:], return_exceptions=True)


async def test_a_waiter_whose_client_left_leaves_the_queue_without_a_capacity_change():
    fleet = _fleet([("s", "slow")], queue_timeout_s=30.0)
    fleet.start()
    try:
        await fleet.acquire("slow", 100, time.monotonic())
        ahead = asyncio.ensure_future(fleet.acquire("slow", 100, time.monotonic()))  # the head: the tick asks it
        left = [False]
        waiter = asyncio.ensure_future(fleet.acquire("slow", 100, time.monotonic() + 1e-3, gone=lambda: left[0]))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        left[0] = True  # the client disconnects; nothing frees capacity
        from kubetier.router.fleet import ClientGone

        try:
            await asyncio.wait_for(waiter, 2.0)
        except ClientGone:
            pass
        else:
            raise AssertionError("a waiter whose client left was admitted")
        assert fleet.metrics.tally("m", "slow").waiting == 1 and not ahead.done()
        ahead.cancel()
        await asyncio.gather(ahead, return_exceptions=True)
    finally:
        await fleet.stop()
