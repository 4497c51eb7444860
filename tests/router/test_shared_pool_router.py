"""A shared pool through the router: engine simulators on loopback (separate processes),
the router in-process, configured the way discovery configures it in a cluster (a
routing document with ``sharedPool`` and pool pods without a tier label).

Four pool servers of 4 sequences each, two tiers with a minimum of one server per bin.
The pool starts 2/2; a burst of interactive streams needs more than the two interactive
servers hold, so idle batch servers move to the interactive bin (status: each server's
bin, the moves), the batch bin keeps its minimum, and every interactive stream completes.
The same burst on the same four servers as a fixed 2/2 partition is run side by side:
its interactive attainment is printed next to the pool's, and the pool must not do worse.
Then long-prompt batch traffic arrives: every stream completes and the limits still hold
(the policy spills a looser tier onto idle tighter servers before it moves one, so the
servers mostly stay where the tight tier needs them; the figures are printed).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import uvloop
import yaml
from router_procs import free_port, wait_http

from kubetier.api.labels import POOL_LABEL, SHARED_POOL, TIER_LABEL
from kubetier.api.profile import LatencyProfile
from kubetier.api.routing import PoolBin, RoutingDocument, RoutingPool, RoutingTier
from kubetier.lean_http import port_of, start_server
from kubetier.router.app import Router
from kubetier.router.discovery import build_config
from openai_stream import count_streamed_tokens

pytestmark = pytest.mark.slow

TIERS = [
    {"name": "interactive", "ttftMs": 1500, "tpotMs": 100, "priority": 100, "meanOutputTokens": 250},
    {"name": "batch", "ttftMs": 30000, "tpotMs": 400, "priority": 10, "meanOutputTokens": 250, "onLate": "queue"},
]
BURST = 12  # interactive streams at once: more than 2 servers x 4 sequences
TOKENS = 250
BATCH_BURST = 8  # long-prompt batch streams: more than the one batch server's 4 sequences
LONG_PROMPT_WORDS = 21_500  # "hello " is 6 characters, 4 characters a token: ~32k tokens


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}


def routing_cm(profile: dict, pool: bool) -> dict:
    doc = RoutingDocument(
        model="m",
        namespace="ns",
        service="svc",
        tiers=[RoutingTier.model_validate(t) for t in TIERS],
        profile=LatencyProfile.model_validate(profile),
        shared_pool=RoutingPool(
            bins=[PoolBin(tier="interactive", min_servers=1, max_servers=3), PoolBin(tier="batch", min_servers=1)]
        )
        if pool
        else None,
    )
    return {
        "metadata": {"name": "svc-routing", "namespace": "ns", "labels": {"kubetier.io/routing-config": "true"}},
        "data": {"routing.json": doc.to_json()},
    }


def pod(i: int, port: int, tier: str | None) -> dict:
    labels = {"app.kubernetes.io/managed-by": "kubetier", "kubetier.io/service": "svc", "kubetier.io/role": "serving"}
    labels.update({TIER_LABEL: tier} if tier else {POOL_LABEL: SHARED_POOL})
    return {
        "metadata": {
            "name": f"svc-{i}",
            "namespace": "ns",
            "labels": labels,
            "annotations": {"kubetier.io/local-endpoint": f"127.0.0.1:{port}"},
        },
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
    }


async def stream(
    client: httpx.AsyncClient, base: str, tier: str, prompt_words: int = 50, tokens: int = TOKENS
) -> tuple[int, int]:
    body = {"model": "m", "prompt": "hello " * prompt_words, "max_tokens": tokens, "stream": True}
    return await count_streamed_tokens(client, base, tier, body)


async def burst(profile: dict, ports: list[int], pool: bool) -> dict:
    tiers = [None] * 4 if pool else ["interactive", "interactive", "batch", "batch"]
    config = build_config(
        [routing_cm(profile, pool)], [pod(i, p, t) for i, (p, t) in enumerate(zip(ports, tiers))], {}, True
    )
    router = Router(config, scrape_interval_s=0.2, access_log=False)
    router.start()
    front = await start_server(router.handle, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{port_of(front)}"
    try:
        async with httpx.AsyncClient(timeout=120) as c:
            before = (await c.get(f"{base}/kubetier/status")).json()["models"]["m"]
            t0 = time.perf_counter()
            results = await asyncio.gather(*(stream(c, base, "interactive") for _ in range(BURST)))
            wall = time.perf_counter() - t0
            after = (await c.get(f"{base}/kubetier/status")).json()["models"]["m"]
            # then the traffic shifts to batch with long prompts (~32k tokens), which may
            # not spill onto the interactive servers (they would delay the interactive
            # tier's next first token past its target): idle servers move back
            back = await asyncio.gather(*(stream(c, base, "batch", LONG_PROMPT_WORDS, 16) for _ in range(BATCH_BURST)))
            shifted = (await c.get(f"{base}/kubetier/status")).json()["models"]["m"]
    finally:
        front.close()
        await router.stop()
    return {"before": before, "after": after, "results": results, "wall_s": wall, "back": back, "shifted": shifted}


def bins_of(status: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in status["servers"]:
        out[s["tier"]] = out.get(s["tier"], 0) + 1
    return out


def test_pool_servers_move_to_the_bin_that_needs_them(procs, small_profile):
    profile = yaml.safe_load(Path(small_profile).read_text())
    ports = [free_port() for _ in range(4)]
    for p in ports:
        procs.engine(p, "m", small_profile)
    for p in ports:
        wait_http(f"http://127.0.0.1:{p}/health", timeout=60)

    pooled = asyncio.run(burst(profile, ports, pool=True))
    fixed = asyncio.run(burst(profile, ports, pool=False))

    before, after = pooled["before"], pooled["after"]
    assert before["sharedPool"] is True and all(s["pooled"] for s in before["servers"])
    assert bins_of(before) == {"interactive": 2, "batch": 2}, before["servers"]
    assert after["binMoves"] >= 1
    # batch keeps its minimum of one server; interactive stays within its maximum of three
    assert bins_of(after) == {"interactive": 3, "batch": 1}, after["servers"]
    assert fixed["after"]["binMoves"] == 0 and fixed["after"]["sharedPool"] is False
    assert bins_of(fixed["after"]) == {"interactive": 2, "batch": 2}

    assert all(r == (200, TOKENS) for r in pooled["results"]), pooled["results"]
    att_pool = after["tiers"]["interactive"]["attainmentPercent"]
    att_fixed = fixed["after"]["tiers"]["interactive"]["attainmentPercent"]
    print(
        f"[shared pool] {BURST} interactive streams on 4 servers: pool attainment {att_pool}% "
        f"({after['binMoves']} moves, {pooled['wall_s']:.1f} s) vs fixed 2/2 partition {att_fixed}% "
        f"({fixed['wall_s']:.1f} s)"
    )
    assert att_pool is not None and att_fixed is not None
    assert att_pool >= att_fixed
    shifted = pooled["shifted"]
    # batch's turn: served (spilled onto idle interactive servers, or moved ones), none lost
    assert all(r == (200, 16) for r in pooled["back"]), pooled["back"]
    assert bins_of(shifted)["batch"] >= 1 and bins_of(shifted)["interactive"] <= 3
    print(
        f"[shared pool] then {BATCH_BURST} long-prompt batch streams: bins {bins_of(shifted)}, moves {shifted['binMoves']}, batch {shifted['tiers']['batch']}"
    )
