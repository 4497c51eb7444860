"""Autoscaling on the local cluster, with traffic through two real routers.

The operator (its own process, under its least-privilege ServiceAccount) reads the
status of both routers (KUBETIER_ROUTER_STATUS_URLS); KWOK pods get loopback engine
simulators (kubetier.localdev.LocalEngines). Checked:

1. a ``min: 0`` tier starts at zero (status condition ScaledToZero) and serves its first
   streamed request after a scale-from-zero, with no request lost; the first-token time
   is printed;
2. a burst split over both routers scales the interactive tier out (Event ScaledOut);
3. after the burst the interactive tier scales in: the least-loaded server named in the
   ScaledIn Event is the one deleted (pod-deletion-cost), with light traffic through
   both routers completing meanwhile (no failed stream);
4. the idle ``min: 0`` tier goes back to zero after its keep-alive (Event ScaledToZero).

Timings are printed (``-s``), not asserted beyond the tiers' own TTFT bounds.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest

from e2e_support import Kubectl, NamespacedStack, router_status, simulator_service, wait_until
from kubetier.localdev.processes import free_loopback_port as free_port

SERVICE = "as-e2e"
MODEL = "llama-3.1-8b"
ZERO_SERVICE = "as-zero"
ZERO_MODEL = "llama-3.1-8b-batch"
WARM_SERVICE = "as-warm"
WARM_MODEL = "llama-3.1-8b-warm"
# The simulator's model load (--model-load-seconds) and level-1 wake (--wake-seconds).
# KWOK marks a pod Ready before its loopback engine has loaded (no readiness probe
# runs), so a request routed to a new server meets 503 "model is loading": the router
# must hold it again (kubetier.router.scale_from_zero), not fail it.
ENGINE_LOAD_S = 8
WAKE_S = 1
# The routers' hold bound for a tier at zero is TTFT + this; the operator's pre-warm lead.
EXPECTED_START_S = 40


def _service(ns: str, name: str, model: str, tier: dict) -> dict:
    args = ["--model-load-seconds", str(ENGINE_LOAD_S), "--wake-seconds", str(WAKE_S)]
    # maxNumSeqs 4: a handful of streams is a burst (target 2.8 per server)
    return simulator_service(name, ns, model, [tier], args, max_num_seqs=4)


def services(ns: str) -> list[dict]:
    """An always-on interactive service, and a one-tier service that may scale to zero
    (one tier, so its requests cannot spill onto a tighter tier's server and must wait
    for its own scale-from-zero)."""
    interactive = {
        "name": "interactive",
        "ttftMs": 2000,
        "tpotMs": 40,
        "priority": 100,
        "meanOutputTokens": 64,
        "onLate": "queue",
        "replicas": {"min": 1, "max": 3},
    }
    batch = {
        "name": "batch",
        "ttftMs": 60000,
        "tpotMs": 200,
        "priority": 10,
        "meanOutputTokens": 64,
        "onLate": "queue",
        "replicas": {"min": 0, "max": 2},
        "prewarm": {"scaleToZero": True, "keepAliveSeconds": 20},
    }
    # the same tier with one warm standby (engine loaded, asleep): its scale-from-zero
    # is a promotion, not a cold start
    warm = {**batch, "prewarm": {**batch["prewarm"], "standby": 1}}
    return [
        _service(ns, SERVICE, MODEL, interactive),
        _service(ns, ZERO_SERVICE, ZERO_MODEL, batch),
        _service(ns, WARM_SERVICE, WARM_MODEL, warm),
    ]


def tier_status(ms: dict, name: str) -> dict:
    return next((t for t in (ms.get("status") or {}).get("tiers") or () if t["name"] == name), {})


def condition(ms: dict, ctype: str) -> dict:
    return next((c for c in (ms.get("status") or {}).get("conditions") or () if c["type"] == ctype), {})


def events(kubectl: Kubectl, ns: str, reason: str) -> list[dict]:
    return [e for e in kubectl.items("events", ns) if e.get("reason") == reason]


async def stream_one(base: str, tier: str, max_tokens: int, model: str = MODEL) -> tuple[int, float, float, int]:
    """(status, first-token seconds, total seconds, tokens) of one streamed completion."""
    t0 = time.perf_counter()
    first = -1.0
    tokens = 0
    async with (
        httpx.AsyncClient(timeout=180) as c,
        c.stream(
            "POST",
            f"{base}/v1/completions",
            json={"model": model, "prompt": "hello " * 20, "max_tokens": max_tokens, "stream": True},
            headers={"X-Kubetier-Tier": tier},
        ) as r,
    ):
        if r.status_code != 200:
            await r.aread()
            return r.status_code, -1.0, time.perf_counter() - t0, 0
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                if json.loads(line[6:]).get("choices"):
                    tokens += 1
                    if first < 0:
                        first = time.perf_counter() - t0
    return 200, first, time.perf_counter() - t0, tokens


@pytest.mark.timeout(600)
def test_scale_from_zero_burst_and_back_to_zero(kubectl: Kubectl, kubeconfig: str, crds, api_client, namespace):
    ns = namespace
    ports = [free_port(), free_port()]
    bases = [f"http://127.0.0.1:{p}" for p in ports]
    stack = NamespacedStack(kubectl, kubeconfig, ns, f"kubetier-as-operator-{ns}", "kubetier-autoscale-")
    workdir = stack.workdir
    try:
        stack.start_operator(
            env={
                "KUBETIER_ROUTER_STATUS_URLS": ",".join(f"{b}/kubetier/status" for b in bases),
                "KUBETIER_EXPECTED_START_SECONDS": str(EXPECTED_START_S),
            }
        )
        for i, port in enumerate(ports):
            stack.start_router(port, f"router{i}.log", env={"KUBETIER_EXPECTED_START_SECONDS": str(EXPECTED_START_S)})
        stack.start_engines(api_client)
        kubectl.apply(services(ns))

        def ms(name: str = SERVICE) -> dict:
            return kubectl.json("get", "modelservice", name, "-n", ns)

        wait_until(lambda: tier_status(ms(), "interactive").get("readyReplicas") == 1, "interactive ready", timeout=120)

        def at_zero():
            m = ms(ZERO_SERVICE)
            ok = condition(m, "ScaledToZero").get("status") == "True" and condition(m, "Ready").get("status") == "True"
            return m if ok else None

        m = wait_until(at_zero, "the batch service Ready at zero (ScaledToZero=True)", timeout=60,
                       describe=lambda: json.dumps(ms(ZERO_SERVICE).get("status"))[:1500])  # fmt: skip
        print(kubectl("get", "modelservice", "-n", ns, check=False))
        assert "batch" in condition(m, "ScaledToZero")["message"]
        assert m["status"]["scaleSummary"] == "0/0", m["status"]

        def routers_ready():
            for b in bases:
                doc = router_status(b)
                servers = (doc.get("models") or {}).get(MODEL, {}).get("servers", [])
                known = doc.get("models") or {}
                if not any(s.get("ready") for s in servers) or not {ZERO_MODEL, WARM_MODEL} <= set(known):
                    return None
            return True

        wait_until(routers_ready, "both routers to see the interactive server", timeout=90)

        def standby_pods() -> list[dict]:
            return [
                p
                for p in kubectl.items("pods", ns, f"kubetier.io/service={WARM_SERVICE},kubetier.io/role=standby")
                if not p["metadata"].get("deletionTimestamp")
            ]

        asleep = "kubetier.io/standby-asleep"
        wait_until(
            lambda: any((p["metadata"].get("annotations") or {}).get(asleep) for p in standby_pods()) or None,
            "the warm service's standby loaded and put to sleep",
            timeout=120,
        )

        # 1. scale from zero: the router holds the request, the operator starts a server
        status, first, total, tokens = asyncio.run(stream_one(bases[0], "batch", 16, ZERO_MODEL))
        print(f"[autoscale e2e] scale-from-zero: first token after {first:.2f} s, done after {total:.2f} s")
        assert status == 200 and tokens == 16, (status, tokens)
        assert first <= 60.0  # the batch tier's TTFT
        assert events(kubectl, ns, "ScaledFromZero"), "no ScaledFromZero Event"
        assert events(kubectl, ns, "ScaledFromZero"), "no ScaledFromZero Event"
        assert tier_status(ms(ZERO_SERVICE), "batch").get("desiredReplicas") == 1

        # 1b. the same from zero with a standby: promoted (woken, relabelled), not started
        before_standby = {p["metadata"]["name"] for p in standby_pods()}
        status, wfirst, wtotal, wtokens = asyncio.run(stream_one(bases[1], "batch", 16, WARM_MODEL))
        print(
            f"[autoscale e2e] scale-from-zero by promotion: first token after {wfirst:.2f} s, done after {wtotal:.2f} s; "
            f"cold start / promotion first-token ratio {first / wfirst:.1f}x"
        )
        assert status == 200 and wtokens == 16, (status, wtokens)
        promoted_ev = wait_until(
            lambda: [e for e in events(kubectl, ns, "PromotedStandby") if e["involvedObject"]["name"] == WARM_SERVICE],
            "a PromotedStandby Event",
            timeout=30,
        )
        msg = promoted_ev[0]["message"]
        print(f"[autoscale e2e] {msg}")
        promoted = msg.split("standby ")[1].split(" ")[0].split("/")[-1]
        assert promoted in before_standby, (promoted, before_standby)
        pod = kubectl.json("get", "pod", promoted, "-n", ns)
        labels = pod["metadata"]["labels"]
        assert labels["kubetier.io/role"] == "serving" and labels["kubetier.io/pool"] == "promoted", labels
        owners = pod["metadata"]["ownerReferences"]
        assert [o["kind"] for o in owners] == ["ModelService"], owners
        # the standby Deployment starts a replacement; the serving Deployment runs
        # desired (1) minus promoted (1) pods: no cold start behind the promotion
        wait_until(
            lambda: {p["metadata"]["name"] for p in standby_pods()} - before_standby or None,
            "a replacement standby",
            timeout=60,
        )
        dep = kubectl.json("get", "deployment", f"{WARM_SERVICE}-batch", "-n", ns)
        assert dep["spec"]["replicas"] == 0, dep["spec"]
        assert not events(kubectl, ns, "PromotionFailed")
        # a promotion is timed from the wake to the relabel (Event); a cold start from
        # the pod's creation to its engine's first token (the cold first token above)
        promote_s = float(msg.split("promoted into serving in ")[1].split(" s")[0])
        assert wfirst < first, f"promotion ({wfirst:.2f} s) not faster than a cold start ({first:.2f} s)"
        pushed = (workdir / "operator.log").read_text()
        assert "holds requests at zero" in pushed, "no demand push from a router reached the operator"
        (workdir / "timings.json").write_text(
            json.dumps(
                {
                    "scaleFromZeroFirstTokenS": first,
                    "doneS": total,
                    "promotionFirstTokenS": wfirst,
                    "promotionS": promote_s,
                    "engineLoadS": ENGINE_LOAD_S,
                    "wakeS": WAKE_S,
                }
            )
        )

        # 2. a burst of interactive streams over both routers: scale out
        async def burst() -> list[tuple[int, float, float, int]]:
            jobs = [stream_one(bases[i % 2], "interactive", 1500) for i in range(14)]
            return await asyncio.gather(*jobs)

        t0 = time.perf_counter()
        results = asyncio.run(burst())
        (workdir / "router0-after-burst.json").write_text(httpx.get(f"{bases[0]}/kubetier/status", timeout=5).text)
        assert all(r[0] == 200 and r[3] == 1500 for r in results), [r[:1] + r[3:] for r in results]
        out = wait_until(lambda: events(kubectl, ns, "ScaledOut"), "a ScaledOut Event for the burst", timeout=60)
        print(
            f"[autoscale e2e] burst: 14 streams over 2 routers in {time.perf_counter() - t0:.1f} s; {out[0]['message']}"
        )
        assert "interactive" in out[0]["message"]

        # 3. scale-in once the burst is over: the least-loaded server is drained and exactly
        #    it is deleted (pod-deletion-cost), while light traffic keeps flowing unharmed
        def interactive_pods() -> set[str]:
            return {
                p["metadata"]["name"]
                for p in kubectl.items("pods", ns, f"kubetier.io/service={SERVICE}")
                if not p["metadata"].get("deletionTimestamp")
            }

        wait_until(lambda: len(interactive_pods()) == 3 or None, "3 interactive pods", timeout=60)
        before = interactive_pods()
        stop = threading.Event()
        outcomes: list[tuple[int, int]] = []

        def light_traffic() -> None:
            i = 0
            while not stop.is_set():
                r = asyncio.run(stream_one(bases[i % 2], "interactive", 40))
                outcomes.append((r[0], r[3]))
                i += 1
                time.sleep(0.5)

        t0 = time.perf_counter()
        traffic = threading.Thread(target=light_traffic, daemon=True)
        traffic.start()
        try:
            ev = wait_until(lambda: events(kubectl, ns, "ScaledIn"), "a ScaledIn Event after the burst", timeout=300)
            victim = ev[0]["message"].split("drain least-loaded ")[1].split(" ")[0].split("/")[-1]
            assert victim in before, (victim, before)
            wait_until(lambda: victim not in interactive_pods() or None, f"{victim} deleted", timeout=240)
            time.sleep(3)
        finally:
            stop.set()
            traffic.join(timeout=60)
        after = interactive_pods()
        print(f"[autoscale e2e] scale-in {time.perf_counter() - t0:.0f} s after the burst: {ev[0]['message']}")
        assert after == before - {victim}, f"only the drained server goes: before {before}, after {after}"
        assert outcomes and all(o == (200, 40) for o in outcomes), outcomes

        # 4. batch idle for its keep-alive (20 s): back to zero
        t0 = time.perf_counter()
        wait_until(lambda: events(kubectl, ns, "ScaledToZero"), "a ScaledToZero Event", timeout=120)
        wait_until(
            lambda: tier_status(ms(ZERO_SERVICE), "batch").get("replicas") == 0 or None, "batch pods gone", timeout=240
        )
        print(f"[autoscale e2e] batch back at zero {time.perf_counter() - t0:.1f} s after the check began")
        # the promoted server goes too (deleted by the operator: no ReplicaSet owns it);
        # the standby stays
        wait_until(
            lambda: tier_status(ms(WARM_SERVICE), "batch").get("replicas") == 0 or None,
            "the promoted server gone at zero",
            timeout=240,
        )
        assert promoted not in {p["metadata"]["name"] for p in kubectl.items("pods", ns)}
        assert tier_status(ms(WARM_SERVICE), "batch").get("standbyReplicas") == 1
        print(kubectl("get", "modelservice", "-n", ns, check=False))
    finally:
        stack.close([SERVICE, ZERO_SERVICE, WARM_SERVICE])
