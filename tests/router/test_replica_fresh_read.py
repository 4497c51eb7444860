"""Two router replicas that share nothing but the engines do not put a stream on a server
the other replica filled since their last scrape.

Each replica knows its own streams exactly and the other's only from the engines'
/metrics. Between scrapes it does not see the slots the other replica filled, and both run
the same most-loaded-feasible choice on the same old snapshot: in the replicas benchmark
at a 1 s scrape, three replicas answered 2-15 interactive requests per run late (one
router: 0) while their 429s were the same as one router's (docs/router.md, "N router
replicas"). With the fresh read (``ModelFleet.fresh_read_s``) a replica that has seen
other replicas' streams on the model's engines re-reads an engine's /metrics before
routing onto it when its view is older than the interval, and decides again.

Here: two real engine simulators whose batch slot binds (a second sequence makes every
token slower than the tier's TPOT), two in-process routers on loopback, and scrapes
taken by hand so the staleness is exact. Replica B fills both engines, one after the
other; replica A scraped between the two, so its view says the second engine is free. A
request to A must then wait (fresh read on) instead of landing on the full engine, and
start within a second of B's streams ending, with no scrape of A (it re-reads the
engines its waiting request may use). The control, fresh read off, shows the collision
and the waiting request left waiting until A's next scrape: the test can fail.
"""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
import uvloop
import yaml
from in_process import serving
from router_procs import free_port, stream_once, wait_http

from kubetier.router.app import Router
from kubetier.router.bench_replicas import capacity_profile
from kubetier.router.config import parse_config


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


TOKENS = 24  # 100 ms each at batch 1: a stream holds its engine about 2.5 s


async def _engine_running(client: httpx.AsyncClient, port: int) -> int:
    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[-1])
            for line in text.splitlines()
            if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting"))
        )
    )


async def _until_running(client: httpx.AsyncClient, port: int, n: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while await _engine_running(client, port) != n:
        assert asyncio.get_running_loop().time() < deadline, f"engine :{port} never ran {n}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def replica(cfg: dict, fresh_read_s: float, tick: bool = True):
    """A router replica whose periodic scrapes are taken by hand (``scrape``); its tick
    runs unless ``tick`` is False (it asks waiting requests again after a scrape)."""
    router = Router(parse_config(cfg), scrape_interval_s=3600.0, fresh_read_s=fresh_read_s)
    fleet = router.fleets["m"]
    if tick:
        fleet._tasks.append(asyncio.ensure_future(fleet._tick_loop()))
    async with serving(router, start=False) as base:
        yield router, base


async def scrape(router: Router) -> None:
    fleet = router.fleets["m"]
    await asyncio.gather(*(fleet._scrape(sid) for sid in fleet.upstreams))


@pytest.mark.parametrize(
    "fresh_read_s, reads_for_waiters",
    [(0.1, True), (0.0, False), (0.1, False)],
    ids=["fresh-read", "control-no-fresh-read", "control-no-reads-for-waiters"],
)
async def test_a_replica_does_not_fill_a_server_the_other_replica_filled_since_its_scrape(
    procs, tmp_path, fresh_read_s, reads_for_waiters
):
    profile = tmp_path / "slots.yaml"
    # 100 ms per token at batch 1, 200 ms at 8: a second sequence makes it 114 ms.
    profile.write_text(yaml.safe_dump(capacity_profile(100.0, 8, 1.0)))
    ports = {"s1": free_port(), "s2": free_port()}
    for port in ports.values():
        procs.engine(port, "m", str(profile))
    for port in ports.values():
        wait_http(f"http://127.0.0.1:{port}/health", 30)
    cfg = {
        "models": [
            {
                "name": "m",
                "profile": str(profile),
                # TPOT 105 ms: one sequence per engine (two take 114 ms per token).
                "tiers": [{"name": "t", "ttftMs": 600, "tpotMs": 105, "meanOutputTokens": TOKENS, "onLate": "queue"}],
                "servers": [{"url": f"http://127.0.0.1:{p}", "tier": "t", "id": sid} for sid, p in ports.items()],
            }
        ]
    }
    async with (
        replica(cfg, fresh_read_s) as (a, base_a),
        replica(cfg, 0.1) as (b, base_b),
        httpx.AsyncClient(timeout=30) as client,
    ):
        if not reads_for_waiters:
            a.fleets["m"]._read_for_waiters = lambda: None  # type: ignore[method-assign]
        await asyncio.gather(scrape(a), scrape(b))  # both: every engine idle
        # B's first stream: both engines idle, the tie goes to the id that sorts last.
        x = asyncio.ensure_future(stream_once(client, base_b, TOKENS))
        await _until_running(client, ports["s2"], 1)
        await scrape(a)  # A now sees B's stream on s2: the model's engines are shared
        # B's second stream goes to s1 (s2 is full for the tier); A's view of s1 is now old.
        y = asyncio.ensure_future(stream_once(client, base_b, TOKENS))
        await _until_running(client, ports["s1"], 1)
        await asyncio.sleep(0.25)  # older than the fresh-read interval
        z = asyncio.ensure_future(stream_once(client, base_a, TOKENS))
        await asyncio.sleep(0.4)  # A decided (and with the fresh read, read s1 first)
        running = {sid: await _engine_running(client, p) for sid, p in ports.items()}
        checks = a.status()["models"]["m"]["viewChecks"]
        if fresh_read_s == 0.0:
            # Without the read A trusts its old view: s1 "free", and it runs two sequences.
            assert running == {"s1": 2, "s2": 1}, running
            assert checks["fresh_reads"] == 0
        else:
            assert running == {"s1": 1, "s2": 1}, running  # A's request waits, no engine overfilled
            assert checks["fresh_reads"] >= 1 and checks["route_changed"] >= 1, checks
            assert a.fleets["m"].metrics.tally("m", "t").waiting == 1
        assert await x == TOKENS and await y == TOKENS
        if fresh_read_s == 0.0:
            assert await asyncio.wait_for(z, 15) == TOKENS  # (it ran on the overfilled s1)
            return
        # B's streams ended and freed both engines. A's waiting request sees that within a
        # few reads (every 0.1 s while it waits), with no scrape of A; without the reads
        # for waiters, A learns it only at its next scrape (an hour away here).
        loop = asyncio.get_running_loop()
        freed_at = loop.time()
        while sum([await _engine_running(client, p) for p in ports.values()]) == 0 and loop.time() - freed_at < 1.0:
            await asyncio.sleep(0.02)
        started = sum([await _engine_running(client, p) for p in ports.values()]) == 1
        assert started == reads_for_waiters, f"A's request started within {loop.time() - freed_at:.2f} s: {started}"
        if not started:
            await scrape(a)
        assert await asyncio.wait_for(z, 15) == TOKENS


@pytest.mark.parametrize("read_ahead", [True, False], ids=["read-ahead", "control-no-read-ahead"])
async def test_a_request_about_to_be_refused_reads_the_engines_first(procs, tmp_path, read_ahead):
    """Replica A's request waits for the one engine, which replica B's stream holds; B's
    stream ends well before A's wait budget does. With no tick (no reads for waiters) the
    only way A can learn of the freed slot before refusing is the read just before its
    budget ends (``READ_AHEAD_S``): with it the request is served, without it refused (429)."""
    profile = tmp_path / "slots.yaml"
    # 100 ms per token at batch 1, 200 ms at batch 2: one sequence per engine for the tier.
    profile.write_text(yaml.safe_dump(capacity_profile(100.0, 8, 7.0)))
    port = free_port()
    procs.engine(port, "m", str(profile))
    wait_http(f"http://127.0.0.1:{port}/health", 30)
    cfg = {
        "models": [
            {
                "name": "m",
                "profile": str(profile),
                "tiers": [{"name": "t", "ttftMs": 2500, "tpotMs": 105, "meanOutputTokens": 8, "onLate": "reject"}],
                "servers": [{"url": f"http://127.0.0.1:{port}", "tier": "t", "id": "s1"}],
            }
        ]
    }
    async with (
        replica(cfg, 0.1, tick=False) as (a, base_a),
        replica(cfg, 0.1) as (b, base_b),
        httpx.AsyncClient(timeout=30) as client,
    ):
        if not read_ahead:

            async def no_reads(tier: str) -> None:
                return None

            a.fleets["m"]._read_for_tier = no_reads  # type: ignore[method-assign]
        await asyncio.gather(scrape(a), scrape(b))
        x = asyncio.ensure_future(stream_once(client, base_b, 8))  # about 0.9 s on the engine
        await _until_running(client, port, 1)
        await scrape(a)  # A sees B's stream: shared, and the engine full
        body = {"model": "m", "prompt": list(range(1000, 1064)), "max_tokens": 8, "stream": True}
        resp = await client.post(f"{base_a}/v1/completions", json=body)  # waits, then served or refused
        assert await x == 8
        checks = a.status()["models"]["m"]["viewChecks"]
        if read_ahead:
            assert resp.status_code == 200, resp.text
            assert resp.text.count('"choices":[{') >= 8
            assert checks["deadline_reads"] >= 1, checks
        else:
            assert resp.status_code == 429, resp.text
