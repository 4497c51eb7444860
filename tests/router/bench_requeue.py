"""In-process benchmark of the router's wait queue: routing decisions and CPU per admitted
request when far more requests arrive than the servers take (a saturated queue).

No HTTP, no engines: ``streams`` concurrent clients each acquire a server from a
``ModelFleet`` (the benchmark's three tiers, one slot per server), hold it for 20-80 ms
and release it, until ``requests`` were admitted; the fleet's tick runs as in the router.
With ``--before FILE`` (an older ``kubetier/router/fleet.py``, e.g. from
``git show REV:operator/kubetier/router/fleet.py``) both run alternately in this one
process, so the ratio is taken under the same machine load. Prints figures; asserts nothing.

    .venv/bin/python tests/router/bench_requeue.py --before /tmp/fleet_before.py
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import sys
import time

from kubetier.policy.latency import LatencyModel, load_profile
from kubetier.policy.routing import TierSLO
from kubetier.router.config import ModelSpec, ServerSpec
from kubetier.router.metrics import RouterMetrics

TIERS = [
    TierSLO("interactive", ttft_ms=300, tpot_ms=40, priority=100, mean_output_tokens=64),
    TierSLO("standard", ttft_ms=1000, tpot_ms=60, priority=50, mean_output_tokens=64),
    TierSLO("batch", ttft_ms=5000, tpot_ms=200, priority=10, mean_output_tokens=64, on_late="queue"),
]
SHARES = [0.2, 0.3, 0.5]


def _load_fleet_module(path: str | None):
    if path is None:
        from kubetier.router import fleet

        return fleet
    spec = importlib.util.spec_from_file_location("fleet_before", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fleet_before"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


async def _run(mod, streams: int, requests: int, servers_per_tier: int, seed: int) -> dict:
    d = load_profile("llama-3.1-8b-h100").to_dict()
    d["maxNumSeqs"] = 1
    servers = [ServerSpec(f"{t.name}-{i}", "127.0.0.1", 9, t.name) for t in TIERS for i in range(servers_per_tier)]
    fleet = mod.ModelFleet(
        ModelSpec("m", LatencyModel.from_dict(d), TIERS, servers), RouterMetrics("bench"), queue_timeout_s=60.0
    )
    calls = [0]
    inner = fleet._decide

    def counted(*a):
        calls[0] += 1
        return inner(*a)

    fleet._decide = counted
    fleet._tasks.append(asyncio.ensure_future(fleet._tick_loop()))  # the tick, not the scrapes
    rng = random.Random(seed)
    admitted = rejected = 0
    left = [requests]

    async def client() -> None:
        nonlocal admitted, rejected
        while left[0] > 0:
            left[0] -= 1
            tier = rng.choices(TIERS, SHARES)[0]
            try:
                up, _ = await fleet.acquire(tier.name, 100, time.monotonic())
            except Exception:
                rejected += 1
                await asyncio.sleep(0.01)
                continue
            admitted += 1
            await asyncio.sleep(rng.uniform(0.02, 0.08))
            fleet.release(up.spec.server_id, 100, 64, prefilled=False, tier=tier.name)

    c0, t0 = time.process_time(), time.monotonic()
    await asyncio.gather(*(client() for _ in range(streams)))
    c1, t1 = time.process_time(), time.monotonic()
    await fleet.stop()
    return {
        "admitted": admitted,
        "rejected": rejected,
        "decisions": calls[0],
        "decisions_per_admitted": round(calls[0] / max(admitted, 1), 2),
        "cpu_us_per_admitted": round((c1 - c0) * 1e6 / max(admitted, 1), 1),
        "wall_s": round(t1 - t0, 2),
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--servers-per-tier", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--before", help="an older fleet.py to run side by side")
    ap.add_argument("--output")
    args = ap.parse_args(argv)
    variants = {"now": _load_fleet_module(None)}
    if args.before:
        variants["before"] = _load_fleet_module(args.before)
    rows = []
    for rep in range(args.repeat):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            row = asyncio.run(_run(variants[name], args.streams, args.requests, args.servers_per_tier, rep))
            row.update(variant=name, repeat=rep, load=round(os.getloadavg()[0], 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
