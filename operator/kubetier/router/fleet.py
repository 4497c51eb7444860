"""The router's live view of one model's servers: routing policy, wait queue, health.

Load comes from the router's own in-flight accounting (``on_admit`` / ``on_prefill_done``
/ ``on_finish`` through the shared policy) and is corrected every ``scrape_interval_s``
from each engine's ``/metrics`` (vLLM names: running + waiting requests, KV-cache
usage), which is also how several workers or router replicas see each other's load.
The same scrape feeds the online latency correction from the engine's own per-token
timing (``_learn_from_engine``); the router's timing of the streams it relays is used
only for engines that export none, since it carries the router's own lag.
A server that fails a health check or a request is marked not ready until its next
successful scrape; discovery marks servers draining or gone.

Router replicas share nothing but the engines. Once a read of any engine's /metrics shows
streams this replica did not send (other replicas route to the same engines), two more
reads keep its view fresh between scrapes (``fresh_read_s``, default 0.1 s; 0: off): a
route onto an engine seen longer ago than that waits for a read of that engine and is
decided again (other replicas' admissions), while requests wait the engines they may use
are re-read at that interval (other replicas' releases), and a request about to be
refused reads them first (``READ_AHEAD_S``). One router never sees foreign streams and
never reads outside its scrape. Measured (docs/router.md, "Reading the engines before
routing and while waiting"): late answers gone (three replicas 0-11 per run -> 0), three
replicas -1.67 points on the interactive tier against one router (was -5.0), two -1.79
(was -1.55): the rest are refusals with the engines really full, not stale views.

Waiting requests sit in one heap per tier, served in the policy's waiting order
(kubetier.policy.waiting.waiting_key, the fleet simulator's too). When capacity frees on
a server, only the tiers that may use that server (its own tier, and looser tiers that
may spill onto it; every tier in a shared pool or under a baseline policy) are asked
again, in waiting order, one request at a time, in the capacity change itself: a routed
request is admitted at once and the next one asked; a tier whose head gets "wait" is not
asked again in that pass (its later requests would get the same answer), as in the
simulator (kubetier.sim.engine ``_retry_waiting``). A waiter wakes on its own only for
time events (the end of its wait budget, its queue deadline, its no-server grace), and a
slow tick asks every tier's head in case no event comes. Before this (December 2026),
every capacity change woke the first 4 heap slots and a late waiter of a queueing tier
re-decided every 0.2 s on its own; in an in-process saturated queue that was several
decisions per admitted request, while in the HTTP benchmark at 1,000 streams it was only
1.24-1.36 decisions per completed request before and 1.3 after (docs/router.md, "Waking
only the waiters that can be admitted").
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from dataclasses import dataclass, replace
from typing import Any

from kubetier.api.router_status import ModelStatus, ServerState, TierDecisions
from kubetier.lean_http.client import UpstreamError, UpstreamPool
from kubetier.policy.bins import BinCount, join_bin, refill_move
from kubetier.policy.latency import LatencyModel
from kubetier.policy.power_cap import capped_model
from kubetier.policy.routing import RoutingPolicy, ServerLoad, TierSLO
from kubetier.policy.routing_costs import costs_for
from kubetier.policy.spot import finishes_before_deadline, tier_long_request_s
from kubetier.policy.waiting import waiting_key
from kubetier.router.config import ModelSpec, ServerSpec
from kubetier.router.engine_progress import _ITERATIONS, EngineProgress
from kubetier.router.latency_feed import LatencyFeed
from kubetier.router.metrics import RouterMetrics
from kubetier.router.scale_from_zero import SCALE_FROM_ZERO_LATE, DemandBoard, hold_bound_s

# Streams on a server under a preemption notice move this long before its deadline: one
# re-prefill on the target plus a margin for the notice's own lateness.
LEAVE_MARGIN_S = 5.0

log = logging.getLogger("kubetier.router")


def _draining(spec: ServerSpec) -> bool:
    """No new requests: marked draining, unless a server under notice still admits the
    requests predicted to finish before its deadline (``admit_until``)."""
    if not spec.draining:
        return False
    return spec.admit_until is None or time.time() >= spec.admit_until


SLOW_CHECKS_UNREADY = 3  # health checks timing out in a row before a server is marked unready
_INF = float("inf")
_TICK_S = 0.05
_GONE_SWEEP_TICKS = 10  # every 0.5 s: waiters whose client left answer and leave the queue
# Read before admitting (``ModelFleet.fresh_read_s``). Several router replicas share
# nothing but the engines: each knows its own streams exactly and the others' only from
# the engines' /metrics, so between two scrapes it does not see the slots the others
# filled and, running the same most-loaded-feasible choice on the same old snapshot,
# puts its request on a server that is already full for the tier. Measured in the
# replicas benchmark at a 1 s scrape (docs/router.md, "N router replicas"): one router
# answered 0 interactive requests late per run, two replicas 0-3, three 2-15, while the
# 429s were the same 9-15 in every variant, so the loss was admissions onto servers
# other replicas had filled, not releases seen late. A route onto a server other
# replicas also send to (a read showed streams this replica did not send, within
# SHARED_MEMORY_S, on any server of the model) whose view is older than this re-reads that engine's /metrics first
# (one loopback request; concurrent decisions share it) and decides again on what it
# reports. One router never re-reads (no other replica's streams on its engines).
FRESH_READ_S = 0.1
SHARED_MEMORY_S = 30.0  # a server counts as shared this long after a read last showed others' streams
FRESH_READ_TIMEOUT_S = 0.5  # a fresh read that takes longer is given up (the decision stands)
# A waiting request of a rejecting tier on shared engines wakes this long before its wait
# budget ends, reads the engines it may use and decides on what they report.
READ_AHEAD_S = 0.05
FRESH_READS_PER_DECISION = 2  # reads one decision may wait for before it admits on what it knows
VIEW_CHECK_KEYS = (
    "fresh_reads",  # reads of an engine's /metrics just before a route onto it
    "fresh_read_failed",  # of them: no answer in time (the decision stood)
    "route_kept",  # the decision after the read was the same server
    "route_changed",  # after the read: another server, a wait or a refusal
    "pump_deferred",  # routes found by a capacity change, held for a read first
    "waiting_reads",  # reads of an engine a waiting request may use (releases other replicas made)
    "deadline_reads",  # reads for a request about to reach the end of its wait budget
    "scrapes",  # periodic scrapes with a load report
    "view_over",  # over those scrapes: sequences the view had that the engine no longer ran (unseen releases)
    "view_under",  # sequences the engine ran that the view lacked (unseen admissions)
)


class Rejected(Exception):
    def __init__(self, reason: str, retry_after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class QueueFull(Exception):
    pass


class ClientGone(Exception):
    """The client disconnected while its request waited for a server."""


class NoAlternative(Exception):
    """A retry found no other server free now; waiting would only delay the error."""


class NoServer(Exception):
    """No ready server can take the tier and none became ready in time: an outage (503),
    not load shedding."""

    def __init__(self, waited_s: float, retry_after_s: float) -> None:
        super().__init__(f"no ready server within {waited_s:.1f} s")
        self.waited_s = waited_s
        self.retry_after_s = retry_after_s


class QueueTimeout(Exception):
    """A queueing tier's request waited its whole deadline without getting a server."""

    def __init__(self, waited_s: float) -> None:
        super().__init__(f"waited {waited_s:.1f} s for a server")
        self.waited_s = waited_s


@dataclass
class Upstream:
    spec: ServerSpec
    pool: UpstreamPool
    healthy: bool = True  # last health check / request outcome
    slow_checks: int = 0  # health checks in a row that timed out
    engine_running: int | None = None  # running + waiting the engine reported at the last scrape
    # The engine's own per-token timing at the last scrape (EngineTiming), once it exports
    # one: then the latency correction learns from it, not from the router's clock.
    engine_timing: EngineTiming | None = None
    router_running_at_scrape: int | None = None  # the router's own count just before that scrape
    # Fresh reads (ModelFleet.fresh_read_s): when this replica last read the engine's
    # /metrics, this replica's own streams on it, and its admissions so far (a read counts the
    # ones made while it was under way, which the engine may not have received yet).
    read_at: float = -_INF
    own: int = 0
    admit_seq: int = 0
    read_task: asyncio.Task | None = None


class _Waiter:
    """One waiting request. ``pump`` decides for it in place: its future then carries the
    outcome (``(Upstream, spilled)`` admitted, a reject ``Decision``), or ``None`` when
    the waiter must look for itself (a time event, a gone client, a server outage)."""

    __slots__ = ("arrival", "cancelled", "d", "future", "gone", "key", "prompt_tokens", "tier", "zero")

    def __init__(
        self, key: tuple, future: asyncio.Future, tier: str, prompt_tokens: int, arrival: float, gone, zero: bool
    ) -> None:
        self.key = key
        self.future = future
        self.cancelled = False
        self.tier = tier
        self.prompt_tokens = prompt_tokens
        self.arrival = arrival  # start of its TTFT clock (moved on by a start-up hold's excused time)
        self.gone = gone
        self.zero = zero  # held for a start-up and not yet decided
        self.d: Any = None  # its last decision

    def __lt__(self, other: _Waiter) -> bool:
        return self.key < other.key


class ModelFleet:
    def __init__(
        self,
        spec: ModelSpec,
        metrics: RouterMetrics,
        *,
        kind: str = "slo",
        scale_up_s: float = 0.0,
        max_queue: int = 10_000,
        scrape_interval_s: float = 1.0,
        queue_timeout_s: float = 60.0,
        clock=time.monotonic,
        demand: DemandBoard | None = None,
        fresh_read_s: float = FRESH_READ_S,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.metrics = metrics
        self.clock = clock
        self.tiers: dict[str, TierSLO] = {t.name: t for t in spec.tiers}
        # A shared pool (spec.bin_limits): the policy moves idle pool servers to the bin
        # of a tier that finds no feasible server (kubetier.policy.bins), within limits.
        self.policy = RoutingPolicy(
            spec.tiers,
            kind=kind,
            rng=random.Random(0),
            scale_up_s=scale_up_s,
            rebin_idle=spec.bin_limits is not None,
            bin_limits=spec.bin_limits,
        )
        self.bin_moves = 0  # pool servers moved between bins (by requests or to restore a minimum)
        self.upstreams: dict[str, Upstream] = {}
        self.max_queue = max_queue
        self.scrape_interval_s = scrape_interval_s
        # Before admitting onto a server other replicas also send to, re-read its
        # /metrics if this replica's view of it is older than this (0: never).
        self.fresh_read_s = fresh_read_s
        self.view_checks = dict.fromkeys(VIEW_CHECK_KEYS, 0)
        self._others_seen_at = -_INF  # a read last showed streams this replica did not send
        self.queue_timeout_s = queue_timeout_s
        self.scale_up_s = scale_up_s
        # A tier at zero (kubetier.router.scale_from_zero): held up to TTFT + start-up,
        # and the operator told at once. None: the plain no-server grace.
        self.demand = demand
        # In-flight streams per server: cut at once when the server is marked unready, so
        # they resume elsewhere instead of waiting out a stall timeout.
        self._streams: dict[str, set] = {}
        self._leaving: dict[str, asyncio.TimerHandle] = {}  # sid -> move at its preemption deadline
        self._noticed: set[str] = set()  # servers under a preemption notice
        self._queues: dict[str, list[_Waiter]] = {t: [] for t in self.tiers}  # per tier, waiting order
        self._waiting = 0  # waiters in all queues (not counting cancelled heap entries)
        self.decisions = 0  # routing decisions taken (first ones and re-decisions): the CPU measure
        # (tier, action, reason) -> decisions, and per tier (requests that waited, seconds
        # waited): why requests wait or are refused, in the status document and /metrics.
        self._outcomes: dict[tuple[str, str, str], int] = {}
        self._outcome_series: dict[tuple[str, str, str], Any] = {}
        self._queue_waits: dict[str, list[float]] = {t: [0.0, 0.0] for t in self.tiers}
        self.engine_timing_observations = 0  # scrape intervals that fed the latency correction
        # Server tier -> the waiting tiers that may use such a server (own + looser tiers
        # that spill upward onto it, kubetier.policy.routing rule 2); a shared pool or a
        # baseline policy may put any tier anywhere: every tier.
        self._admits_on: dict[str, tuple[str, ...]] = {}
        for x in self.tiers.values():
            if kind != "slo" or spec.bin_limits is not None:
                self._admits_on[x.name] = tuple(self.tiers)
            else:
                self._admits_on[x.name] = tuple(
                    t.name for t in self.tiers.values() if t.name == x.name or x.tpot_ms < t.tpot_ms
                )
        self._queued = asyncio.Event()  # set when a waiter joins: the tick loop sleeps while nobody waits
        self._seq = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self.latency = LatencyFeed(self.policy, spec.profile)  # the online correction, fed by relayed streams
        self.progress = EngineProgress()  # engine steps between scrapes: the policy's lag give-back
        self.set_servers(spec.servers)

    # ------------------------------------------------------------------ membership

    def set_servers(self, specs: list[ServerSpec]) -> None:
        """Make the fleet match ``specs`` (static config or discovery)."""
        wanted = {s.server_id: s for s in specs}
        for sid in list(self.upstreams):
            if sid not in wanted:
                up = self.upstreams.pop(sid)
                leaving = self._leaving.pop(sid, None)
                self._noticed.discard(sid)
                if leaving is not None:
                    leaving.cancel()
                self.policy.remove_server(sid)
                self.latency.forget_server(sid)
                up.pool.close()
                self._move_streams(sid, "server left the fleet")
        for sid, s in wanted.items():
            cur = self.upstreams.get(sid)
            if s.pooled:
                # A pool server keeps the bin it is in; a new one joins the bin that needs it.
                keep = cur is not None and cur.spec.pooled and (cur.spec.host, cur.spec.port) == (s.host, s.port)
                s = replace(s, tier=cur.spec.tier if keep and cur is not None else self._joining_bin())
            if cur is None or (cur.spec.host, cur.spec.port, cur.spec.tier) != (s.host, s.port, s.tier):
                if cur is not None:
                    cur.pool.close()
                    self.policy.remove_server(sid)
                self.upstreams[sid] = Upstream(s, UpstreamPool(s.host, s.port))
                self.policy.upsert_server(ServerLoad(sid, s.tier, self.server_model(s)))
            else:
                if cur.spec.power_cap_fraction != s.power_cap_fraction:
                    self._set_model(sid, self.server_model(s))
                cur.spec = s
            self._apply_state(sid)
            self._plan_leave(sid)
        self.restore_bin_minimums()
        self.pump()

    # ------------------------------------------------------------------ shared-pool bins

    def _pool_bins(self) -> list[BinCount]:
        """Each tier's routable pool servers and how many of them are idle."""
        servers = dict.fromkeys(self.tiers, 0)
        idle = dict.fromkeys(self.tiers, 0)
        for ld in self.policy.servers():
            up = self.upstreams.get(ld.server_id)
            if up is None or not up.spec.pooled or not ld.ready or ld.draining or ld.tier not in servers:
                continue
            servers[ld.tier] += 1
            idle[ld.tier] += ld.running == 0 and ld.kv_tokens == 0 and ld.queued_prefill_tokens == 0
        return [BinCount(t, servers[t], idle[t], self.tiers[t].tpot_ms) for t in self.tiers]

    def _joining_bin(self) -> str:
        counts: dict[str, int] = {}
        for up in self.upstreams.values():
            if up.spec.pooled:
                counts[up.spec.tier] = counts.get(up.spec.tier, 0) + 1
        return join_bin(counts, list(self.tiers), self.spec.bin_limits)

    def _moved(self, sid: str) -> None:
        """The policy put pool server ``sid`` in another bin: follow it."""
        up = self.upstreams.get(sid)
        ld = self.policy.server(sid)
        if up is None or ld is None or up.spec.tier == ld.tier:
            return
        log.info("pool server %s moved from bin %s to bin %s", sid, up.spec.tier, ld.tier)
        old = (self.name, sid, up.spec.tier, self.metrics.worker)
        for gauge in (self.metrics.server_ready, self.metrics.server_running, self.metrics.server_kv):
            with contextlib.suppress(KeyError):
                gauge.remove(*old)  # the series under the old bin's label would stay stale
        up.spec = replace(up.spec, tier=ld.tier)
        self.bin_moves += 1
        self._apply_state(sid)

    def restore_bin_minimums(self) -> None:
        """Move idle pool servers into bins below their minimum (a server left, or the
        pool started small) while some bin above its minimum has one idle."""
        if self.spec.bin_limits is None:
            return
        for _ in range(len(self.upstreams)):
            move = refill_move(self._pool_bins(), self.spec.bin_limits)
            if move is None:
                return
            src, dst = move
            sid = next(
                ld.server_id
                for ld in self.policy.servers()
                if ld.tier == src
                and ld.ready
                and not ld.draining
                and ld.running == 0
                and ld.kv_tokens == 0
                and ld.queued_prefill_tokens == 0
                and self.upstreams[ld.server_id].spec.pooled
            )
            ld = self.policy.server(sid)
            assert ld is not None
            self.policy.remove_server(sid)
            ld.tier = dst
            self.policy.upsert_server(ld)
            self._moved(sid)

    def server_model(self, s: ServerSpec) -> LatencyModel:
        """The latency model ``s`` is routed with: the profile's, or under a power cap its
        capped model (kubetier.policy.power_cap), so the ordinary feasibility check keeps
        tight-tier requests off capped servers that can no longer meet their TPOT."""
        share = s.power_cap_fraction
        profile = self.spec.profile
        if share is None:
            return profile
        # A cap at or below the idle draw cannot be modelled (the clock would be 0): the
        # server is then taken as 1% of its dynamic range above idle, i.e. very slow.
        floor = profile.idle_watts + 0.01 * (profile.tdp_watts - profile.idle_watts)
        return capped_model(profile, max(floor, share * profile.tdp_watts))

    def _set_model(self, sid: str, model: LatencyModel) -> None:
        cur = self.policy.server(sid)
        if cur is None or cur.model is model:
            return
        self.policy.upsert_server(
            ServerLoad(
                sid,
                cur.tier,
                model,
                ready=cur.ready,
                draining=cur.draining,
                running=cur.running,
                kv_tokens=cur.kv_tokens,
                queued_prefill_tokens=cur.queued_prefill_tokens,
            )
        )
        log.info("server %s: routed as %s", sid, model.name)

    def _apply_state(self, sid: str) -> None:
        up = self.upstreams[sid]
        ready = up.spec.ready and up.healthy
        draining = _draining(up.spec)
        self.policy.set_state(sid, ready=ready, draining=draining)
        labels = (self.name, sid, up.spec.tier, self.metrics.worker)
        self.metrics.server_ready.labels(*labels).set(1 if ready and not draining else 0)
        if not ready:
            self._move_streams(sid, "server marked unready")

    def _plan_leave(self, sid: str) -> None:
        """A server under a preemption notice keeps its streams until shortly before the
        deadline; whatever still runs then resumes on another server from the tokens
        already sent (the client sees one stream). It takes new requests only until its
        ``admit_until`` (deadline-aware draining; none at all when that is unset)."""
        leave_by = self.upstreams[sid].spec.leave_by
        if leave_by is None:
            self._noticed.discard(sid)
            return
        self._noticed.add(sid)
        if sid in self._leaving:
            return
        delay = max(0.0, leave_by - LEAVE_MARGIN_S - time.time())
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # built outside the event loop (tests): nothing in flight yet
            return
        self._leaving[sid] = loop.call_later(delay, self._move_streams, sid, "preemption deadline")
        admit_until = self.upstreams[sid].spec.admit_until
        if admit_until is not None and admit_until > time.time():
            # Deadline-aware draining: new requests until admit_until, then none.
            loop.call_later(admit_until - time.time(), self._stop_admitting, sid)
        log.warning("server %s: preemption notice; streams still running in %.0fs move elsewhere", sid, delay)

    def _stop_admitting(self, sid: str) -> None:
        if sid in self.upstreams:
            self._apply_state(sid)
            log.warning("server %s: preemption notice; no new requests from now on", sid)

    # ------------------------------------------------------------------ in-flight streams

    def track_stream(self, sid: str, cut) -> None:
        """Register ``cut(reason)`` for a stream relayed from ``sid``."""
        self._streams.setdefault(sid, set()).add(cut)

    def untrack_stream(self, sid: str, cut) -> None:
        streams = self._streams.get(sid)
        if streams is not None:
            streams.discard(cut)
            if not streams:
                del self._streams[sid]

    def _move_streams(self, sid: str, reason: str) -> None:
        streams = self._streams.pop(sid, None)
        if streams:
            log.warning("server %s: %s; moving %d in-flight streams", sid, reason, len(streams))
            for cut in list(streams):
                cut(reason)

    def can_serve(self, tier: str) -> bool:
        """Some ready, non-draining server could take ``tier`` (its own servers, or a
        tighter tier's, which the policy may spill onto)."""
        t = self.tiers[tier]
        for up in self.upstreams.values():
            if not (up.healthy and up.spec.ready) or _draining(up.spec):
                continue
            host = self.tiers.get(up.spec.tier)
            if host is not None and (host.name == tier or host.tpot_ms <= t.tpot_ms):
                return True
        return False

    def no_server_grace_s(self, tier: str) -> float:
        """How long a request waits for a server to become ready when none can take its
        tier: a scale-up (``scale_up_s``) or two health checks (an engine coming back),
        and never longer than the tier's first-token target plus that."""
        t = self.tiers[tier]
        return max(self.scale_up_s, 2 * self.scrape_interval_s) + t.ttft_ms / 1000.0

    def mark_unhealthy(self, sid: str) -> None:
        up = self.upstreams.get(sid)
        if up is not None and up.healthy:
            up.healthy = False
            self._apply_state(sid)

    # ------------------------------------------------------------------ admission

    def _too_long_for_notice(self, tier: str) -> list[str]:
        """Servers under a notice that still take new requests, but on which a long request
        of ``tier`` would not finish before the deadline (deadline-aware draining: it goes
        elsewhere, and shorter tiers' requests still use the server)."""
        if not self._noticed:
            return []
        t = self.tiers[tier]
        long_s = tier_long_request_s(t.ttft_ms, t.tpot_ms, t.mean_output_tokens)
        now = time.time()
        out = []
        for sid in self._noticed:
            up = self.upstreams.get(sid)
            if up is None or up.spec.leave_by is None or _draining(up.spec):
                continue
            if not finishes_before_deadline(now, up.spec.leave_by, long_s, LEAVE_MARGIN_S):
                out.append(sid)
        return out

    def _decide(self, tier: str, prompt_tokens: int, arrival: float, exclude: frozenset[str]):
        self.decisions += 1
        d = self._decide_once(tier, prompt_tokens, arrival, exclude)
        key = (tier, d.action, d.reason)
        n = self._outcomes.get(key)
        if n is None:
            self._outcome_series[key] = self.metrics.decisions.labels(self.name, tier, self.metrics.worker, *key[1:])
            n = 0
        self._outcomes[key] = n + 1
        self._outcome_series[key].inc()
        if self.spec.bin_limits is not None and (d.reason == "rebin" or d.action != "route"):
            # The policy moves a pool server on a "rebin" route, and also when the moved
            # server then turned out not to fit this request (the answer is "wait").
            for sid in list(self.upstreams):
                self._moved(sid)
        return d

    def _decide_once(self, tier: str, prompt_tokens: int, arrival: float, exclude: frozenset[str]):
        too_long = self._too_long_for_notice(tier)
        if not exclude and not too_long:
            return self.policy.decide(tier, prompt_tokens, self.clock() - arrival)
        # Servers that already failed this request sit out this one decision.
        hidden = [sid for sid in exclude if sid in self.upstreams] + too_long
        for sid in hidden:
            self.policy.set_state(sid, ready=False)
        try:
            return self.policy.decide(tier, prompt_tokens, self.clock() - arrival)
        finally:
            for sid in hidden:
                self._apply_state(sid)

    async def acquire(
        self, tier: str, prompt_tokens: int, arrival: float, exclude: frozenset[str] = frozenset(), gone=None
    ) -> tuple[Upstream, bool]:
        """A server for the request, waiting if the policy says so. Raises Rejected/QueueFull."""
        t = self.tiers[tier]
        # At zero: no ready server could take the tier (none yet, or the only one still
        # loading). Hold it for the start-up instead of judging it against its TTFT now.
        zero = self.demand if self.demand and self.demand.startup_s > 0 and not exclude else None
        if zero is not None and self.can_serve(tier):
            zero = None
        d: Any = None  # the policy's Decision once one is taken
        if zero is not None:
            grace = max(self.no_server_grace_s(tier), hold_bound_s(t.ttft_ms / 1000.0, zero.startup_s))
        else:
            d = self._decide(tier, prompt_tokens, arrival, exclude)
            if d.action == "route" and self._needs_fresh(d.server_id):
                d = await self._decide_fresh(tier, prompt_tokens, arrival, exclude, d)
            if d.action == "route":
                return self._admit(d.server_id, prompt_tokens, t), d.spilled
            if d.action == "reject":
                raise Rejected(d.reason, d.retry_after_s or 1.0)
            if exclude:
                raise NoAlternative()
            grace = self.no_server_grace_s(tier)
        # A queueing tier waits until its deadline, never forever.
        deadline = arrival + (self.queue_timeout_s if t.on_late == "queue" else _INF)
        if zero is not None and t.on_late == "queue":
            deadline = max(deadline, arrival + grace)
        if self._waiting >= self.max_queue:
            raise QueueFull()
        if zero is not None:
            zero.held(self.name, tier)
        tally = self.metrics.tally(self.name, tier)
        gauge = self.metrics.queue_length.labels(self.name, tier, self.metrics.worker)
        tally.waiting += 1
        gauge.inc()
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            waiting_key(t.priority, arrival, next(self._seq)),
            loop.create_future(),
            tier,
            prompt_tokens,
            arrival,
            gone,
            zero is not None,
        )
        waiter.d = d
        heapq.heappush(self._queues[tier], waiter)
        self._waiting += 1
        self._queued.set()
        outcome: Any = None
        try:
            while True:
                now = self.clock()
                if now - arrival >= grace and not self.can_serve(tier):
                    if zero is not None and t.on_late == "reject":
                        raise Rejected(SCALE_FROM_ZERO_LATE, max(1.0, zero.startup_s / 2))
                    raise NoServer(now - arrival, max(1.0, self.scale_up_s))
                if now >= deadline:
                    raise QueueTimeout(now - arrival)
                # Time events only (capacity changes come through pump): the end of the
                # wait budget (then late: rejected, or queued late), the queue deadline,
                # the no-server grace while it is ahead.
                d = waiter.d
                budget = d.retry_after_s if d is not None and d.retry_after_s else _INF
                budget = min(budget, deadline - now)
                if arrival + grace > now:
                    budget = min(budget, arrival + grace - now)
                # Shared engines: wake READ_AHEAD_S before the wait budget ends, read the
                # engines the tier may use and decide on that (a slot another replica
                # freed since the last read would otherwise be missed and the request refused).
                read_ahead = (
                    d is not None
                    and budget == d.retry_after_s
                    and budget > READ_AHEAD_S
                    and t.on_late == "reject"
                    and self._shared()
                )
                if read_ahead:
                    budget -= READ_AHEAD_S
                handle = loop.call_later(max(budget, 0.001), _wake_one, waiter) if budget < _INF else None
                try:
                    outcome = await waiter.future
                finally:
                    if handle is not None:
                        handle.cancel()
                if outcome is not None:
                    if isinstance(outcome, tuple):
                        return outcome  # admitted by pump
                    raise Rejected(outcome.reason, outcome.retry_after_s or 1.0)
                waiter.future = loop.create_future()
                if gone is not None and gone():
                    raise ClientGone()  # checked at every wake-up: no capacity for a closed socket
                if waiter.zero:
                    if not self.can_serve(tier):
                        continue  # still starting: nothing to decide yet
                    waiter.zero = False
                    waiter.arrival = self.clock()  # the start-up hold is not charged to the TTFT
                if read_ahead:
                    await self._read_for_tier(tier)
                    if waiter.future.done():
                        continue  # a read's capacity-change pass admitted it
                d = self._decide(tier, prompt_tokens, waiter.arrival, exclude)
                if d.action == "route" and self._needs_fresh(d.server_id):
                    d = await self._decide_fresh(tier, prompt_tokens, waiter.arrival, exclude, d)
                    if waiter.future.done():
                        continue  # a capacity change decided for it during the read
                waiter.d = d
                if d.action == "route":
                    return self._admit(d.server_id, prompt_tokens, t), d.spilled
                if d.action == "reject":
                    raise Rejected(d.reason, d.retry_after_s or 1.0)
        except BaseException:
            # Cancelled after pump admitted it but before this coroutine ran again: give
            # the capacity back (and pass it on) instead of leaking it.
            if outcome is None and waiter.future.done() and not waiter.future.cancelled():
                got = waiter.future.result()
                if isinstance(got, tuple):
                    self.release(got[0].spec.server_id, prompt_tokens, 0, prefilled=False)
            raise
        finally:
            if zero is not None:
                zero.released(self.name, tier)
            if not waiter.cancelled:
                waiter.cancelled = True
                self._waiting -= 1
            tally.waiting -= 1
            gauge.dec()
            waited = self.clock() - arrival
            qw = self._queue_waits[tier]
            qw[0] += 1
            qw[1] += waited
            self.metrics.queue_wait.labels(self.name, tier, self.metrics.worker).observe(waited)

    def _admit(self, sid: str, prompt_tokens: int, t: TierSLO) -> Upstream:
        self.policy.on_admit(sid, prompt_tokens, t.mean_output_tokens, t.name)
        up = self.upstreams[sid]
        up.own += 1
        up.admit_seq += 1
        return up

    def prefill_done(self, sid: str, prompt_tokens: int) -> None:
        self.policy.on_prefill_done(sid, prompt_tokens)
        self._pump_for(sid)

    def release(
        self, sid: str, prompt_tokens: int, output_tokens: int, prefilled: bool, tier: str | None = None
    ) -> None:
        """The request left ``sid``; with ``tier`` (a completed stream) its output length
        also teaches the policy the tier's horizon."""
        if tier is not None:
            self.policy.on_request_done(tier, output_tokens)
        if not prefilled:
            self.policy.on_prefill_done(sid, prompt_tokens)
        self.policy.on_finish(sid, prompt_tokens, output_tokens)
        up = self.upstreams.get(sid)
        if up is not None and up.own > 0:
            up.own -= 1
        self._pump_for(sid)

    def _pump_for(self, sid: str) -> None:
        """Capacity freed on ``sid``: ask only the tiers that may use it."""
        if self._waiting:
            up = self.upstreams.get(sid)
            self.pump(up.spec.tier if up is not None else None)

    def pump(self, server_tier: str | None = None) -> None:
        """Capacity changed on a server of ``server_tier`` (None: anywhere, or state
        changed): ask the waiting requests that may use it, in waiting order, one at a
        time. A route is admitted here and then (next loop iteration) picked up by the
        waiter; a tier whose head gets "wait" is done for this pass."""
        if not self._waiting:
            return
        tiers = self._admits_on.get(server_tier, tuple(self.tiers)) if server_tier is not None else tuple(self.tiers)
        open_tiers = []
        for tier in tiers:
            q = self._queues[tier]
            while q and q[0].cancelled:
                heapq.heappop(q)
            if q:
                open_tiers.append(tier)
        held: list[_Waiter] = []  # skipped in this pass, back into their heaps after it
        while open_tiers:
            tier = min(open_tiers, key=lambda x: self._queues[x][0].key)
            q = self._queues[tier]
            w = q[0]
            if w.future.done() or (w.gone is not None and w.gone()) or w.zero:
                # Already woken (its coroutine decides next), its client left, or still held
                # for a start-up: it looks for itself; the pass goes on behind it.
                if not w.future.done():
                    w.future.set_result(None)
                held.append(heapq.heappop(q))
            else:
                d = self._decide(tier, w.prompt_tokens, w.arrival, frozenset())
                if d.action == "route" and self._needs_fresh(d.server_id):
                    # Shared server, old view: read it first; when the read lands this
                    # pass runs again for its tier and decides on what the engine said.
                    self.view_checks["pump_deferred"] += 1
                    self._fresh_read(d.server_id)
                    open_tiers.remove(tier)
                    continue
                w.d = d
                if d.action == "wait":
                    open_tiers.remove(tier)
                    continue
                heapq.heappop(q)
                w.cancelled = True
                self._waiting -= 1
                if d.action == "route":
                    w.future.set_result((self._admit(d.server_id, w.prompt_tokens, self.tiers[tier]), d.spilled))
                else:
                    w.future.set_result(d)
            while q and q[0].cancelled:
                heapq.heappop(q)
            if not q:
                open_tiers.remove(tier)
        for w in held:
            heapq.heappush(self._queues[w.tier], w)

    def _wake_stranded(self, sweep_gone: bool = False) -> None:
        """Waiters of a tier no server can take any more whose grace is over: wake them
        to answer 503 (an outage after they began waiting; the tick's job). With
        ``sweep_gone``, also waiters whose client left (a waiter is no longer woken every
        0.2 s to notice it; a pass skips them anyway, this frees their queue slots)."""
        now = self.clock()
        for tier, q in self._queues.items():
            if not q:
                continue
            if not self.can_serve(tier):
                grace = self.no_server_grace_s(tier)
                for w in q:
                    if not w.cancelled and not w.zero and now - w.arrival >= grace:
                        _wake_one(w)
            if sweep_gone:
                for w in q:
                    if not w.cancelled and w.gone is not None and w.gone():
                        _wake_one(w)

    # ------------------------------------------------------------------ background

    def start(self) -> None:
        self._tasks.append(asyncio.ensure_future(self._tick_loop()))
        self._tasks.append(asyncio.ensure_future(self._scrape_loop()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for up in self.upstreams.values():
            up.pool.close()

    async def _tick_loop(self) -> None:
        # Ticks only while requests wait: 20 wake-ups a second of an idle router were
        # measured at ~3 ms of CPU per second (a Rust peer idles at 0), ~1 us per relayed
        # token at 100 streams.
        ticks = 0
        while True:
            if not self._waiting:
                self._queued.clear()
                await self._queued.wait()
            await asyncio.sleep(_TICK_S)
            self.pump()  # the safety net: every tier's head, in case no event came
            self._read_for_waiters()
            ticks += 1
            self._wake_stranded(sweep_gone=ticks % _GONE_SWEEP_TICKS == 0)

    async def _scrape_loop(self) -> None:
        while True:
            await asyncio.gather(*(self._scrape(sid) for sid in list(self.upstreams)), return_exceptions=True)
            self._export_loads()
            self.restore_bin_minimums()  # a pool server that turned unready may leave a bin short
            await asyncio.sleep(self.scrape_interval_s)

    async def _scrape(self, sid: str) -> None:
        up = self.upstreams.get(sid)
        if up is None:
            return
        try:
            r = await up.pool.request("GET", "/health", header_timeout_s=2.0)
            await r.read_all(timeout=2.0)
            r.close()
            if r.status != 200:
                raise UpstreamError(f"/health answered {r.status}", "headers")
            seq = up.admit_seq
            r = await up.pool.request("GET", "/metrics", header_timeout_s=2.0)
            text = await r.read_all(timeout=2.0)
            r.close()
        except UpstreamError as exc:
            # A refused connection or a bad answer is definite; a check that only timed out
            # may be a starved CPU (seen on a loaded 2-core machine, where marking the
            # engine unready at once cut hundreds of healthy streams): that takes
            # SLOW_CHECKS_UNREADY in a row, since unready moves every in-flight stream.
            if exc.timeout:
                up.slow_checks += 1
                if up.slow_checks < SLOW_CHECKS_UNREADY:
                    return
            if up.healthy:
                log.warning("server %s (%s:%d) unhealthy: %s", sid, up.spec.host, up.spec.port, exc)
            self.mark_unhealthy(sid)
            return
        up.slow_checks = 0
        if sid not in self.upstreams:
            return
        if not up.healthy:
            up.healthy = True
            self._apply_state(sid)
            self.pump()
        self._read_done(sid, up, text, seq, scrape=True)

    def _read_done(self, sid: str, up: Upstream, text: bytes, seq: int, *, scrape: bool) -> None:
        """An engine's /metrics, read when this replica had admitted ``seq`` requests onto
        it: its load replaces the view, plus the admissions made while the read was under
        way (the engine may not have received them yet; counting one it had is corrected
        by the next read, missing one would put another stream on a full server)."""
        up.read_at = self.clock()
        scraped = parse_engine_scrape(text)
        if scraped.timing is not None:
            self._learn_from_engine(sid, up, scraped.timing)
        load = scraped.load
        if load is None:
            return
        running, kv_frac = load
        up.engine_running = running
        if running > up.own:
            # Streams this replica did not send: other replicas route to this model's
            # servers (each replica sends to all of them, so one server's evidence counts
            # for every server: a server this replica has not yet seen shared is not safe).
            self._others_seen_at = up.read_at
        cur = self.policy.server(sid)
        if cur is None:
            return
        if scrape:
            up.router_running_at_scrape = cur.running
            vc = self.view_checks
            vc["scrapes"] += 1
            if cur.running > running:
                vc["view_over"] += cur.running - running
            else:
                vc["view_under"] += running - cur.running
        running += up.admit_seq - seq
        kv = int(kv_frac * self.spec.profile.kv_capacity_tokens)
        self.policy.observe(sid, running, kv, cur.queued_prefill_tokens, self.progress.steps(sid, scraped.iterations))

    # ------------------------------------------------------------------ fresh reads

    def _needs_fresh(self, sid: str) -> bool:
        """A route onto ``sid`` should wait for a fresh read: the server is shared with
        other replicas and this replica's view of it is older than ``fresh_read_s``."""
        if self.fresh_read_s <= 0:
            return False
        up = self.upstreams.get(sid)
        if up is None:
            return False
        now = self.clock()
        return now - self._others_seen_at < SHARED_MEMORY_S and now - up.read_at > self.fresh_read_s

    def _read_for_waiters(self) -> None:
        """Requests wait and other replicas share the engines: re-read the engines they
        may use whose view is older than ``fresh_read_s``. A slot another replica's
        stream freed is otherwise seen only at the next scrape: with reads before
        routing alone (no reads for waiters), two replicas at a 1 s scrape answered no
        request late but refused 16 interactive requests where one router refused 12
        (docs/router.md, "N router replicas"). Each read that lands asks the waiting
        requests again (``_read_fresh``)."""
        if not self._shared():
            return
        usable: set[str] = set()  # server tiers some waiting request may use
        for server_tier, tiers in self._admits_on.items():
            if any(self._queues[t] for t in tiers):
                usable.add(server_tier)
        if not usable:
            return
        now = self.clock()
        for sid, up in self.upstreams.items():
            if up.spec.tier in usable and now - up.read_at > self.fresh_read_s and up.healthy:
                if up.read_task is None or up.read_task.done():
                    self.view_checks["waiting_reads"] += 1
                    self._fresh_read(sid)

    def _shared(self) -> bool:
        return self.fresh_read_s > 0 and self.clock() - self._others_seen_at < SHARED_MEMORY_S

    async def _read_for_tier(self, tier: str) -> None:
        """Read every engine a request of ``tier`` may use not read in the last
        READ_AHEAD_S / 2 (a waiter about to be refused), within FRESH_READ_TIMEOUT_S."""
        now = self.clock()
        tasks = []
        for up in list(self.upstreams.values()):
            if tier in self._admits_on.get(up.spec.tier, ()) and up.healthy and now - up.read_at > READ_AHEAD_S / 2:
                if up.read_task is None or up.read_task.done():
                    self.view_checks["deadline_reads"] += 1
                task = self._fresh_read(up.spec.server_id)
                if task is not None:
                    tasks.append(task)
        if tasks:
            await asyncio.wait([asyncio.shield(x) for x in tasks], timeout=FRESH_READ_TIMEOUT_S)

    def _fresh_read(self, sid: str) -> asyncio.Task | None:
        """Start (or join) a read of ``sid``'s /metrics; when it lands the view is
        updated and the waiting requests that may use the server are asked again."""
        up = self.upstreams.get(sid)
        if up is None:
            return None
        if up.read_task is None or up.read_task.done():
            up.read_task = asyncio.ensure_future(self._read_fresh(sid, up))
        return up.read_task

    async def _read_fresh(self, sid: str, up: Upstream) -> None:
        self.view_checks["fresh_reads"] += 1
        seq = up.admit_seq
        try:
            r = await up.pool.request("GET", "/metrics", header_timeout_s=FRESH_READ_TIMEOUT_S)
            text = await r.read_all(timeout=FRESH_READ_TIMEOUT_S)
            r.close()
            if r.status != 200:
                raise UpstreamError(f"/metrics answered {r.status}", "headers")
        except UpstreamError:
            # Health is the periodic scrape's job; the decision stands on what it knew.
            self.view_checks["fresh_read_failed"] += 1
            up.read_at = self.clock()  # not again at once: the next try after fresh_read_s
            self.pump(up.spec.tier)
            return
        if self.upstreams.get(sid) is not up:
            return
        self._read_done(sid, up, text, seq, scrape=False)
        self.pump(up.spec.tier)

    async def _decide_fresh(self, tier: str, prompt_tokens: int, arrival: float, exclude: frozenset[str], d):
        """``d`` after fresh reads: while it routes onto a shared server seen too long
        ago (at most FRESH_READS_PER_DECISION times), read that engine and decide again."""
        for _ in range(FRESH_READS_PER_DECISION):
            if d.action != "route" or not self._needs_fresh(d.server_id):
                return d
            task = self._fresh_read(d.server_id)
            if task is None:
                return d
            # A decision waits at most FRESH_READ_TIMEOUT_S for the read (an engine that
            # does not accept connections would otherwise hold it for the connect timeout).
            await asyncio.wait([asyncio.shield(task)], timeout=FRESH_READ_TIMEOUT_S)
            before = d.server_id
            d = self._decide(tier, prompt_tokens, arrival, exclude)
            self.view_checks["route_kept" if d.action == "route" and d.server_id == before else "route_changed"] += 1
        return d

    def _learn_from_engine(self, sid: str, up: Upstream, now: EngineTiming) -> None:
        """Feed the latency correction one observation per scrape interval from the
        engine's own clock: its mean time per output token over the interval (its
        per-token histogram's sum and count) against the profile's decode step at the
        batch it ran, plus its prompt tokens' chunk cost spread over those tokens.

        Why not the router's own timing of the streams it relays: on a router short of
        CPU those timings carry the router's own event-loop lag and upstream connection
        set-up. At 1,000 streams on the shared 2-core rig the first tokens timed at the
        router were 14x the engines' own on average (router 909 ms, engines 63 ms), the
        correction climbed to its 2.0 bound within a few seconds, the interactive tier
        (40 ms TPOT on a 25 ms engine) had no feasible server left and 189 of its
        requests waited and were refused (429) while the engines, driven directly in the
        same run, met 100/100/100 (docs/router.md, "The router learned its own lag")."""
        prev, up.engine_timing = up.engine_timing, now
        if prev is None:
            return
        tokens = now.tokens - prev.tokens
        seconds = now.seconds - prev.seconds
        if tokens < 0 or seconds < 0.0:
            return  # the engine restarted (its counters went back): start again from here
        if tokens < MIN_ENGINE_TOKENS or seconds == 0.0:
            up.engine_timing = prev  # too few tokens to say anything yet: a longer interval
            return
        ld = self.policy.server(sid)
        if ld is None:
            return
        costs = costs_for(ld.model)  # the server's own model (a power-capped one under a cap)
        batch = max(1, round((prev.running + now.running) / 2))
        kv = int((prev.kv_fraction + now.kv_fraction) / 2 * self.spec.profile.kv_capacity_tokens)
        prompt = max(0.0, now.prompt_tokens - prev.prompt_tokens)
        predicted = costs.decode(batch, kv) + prompt * costs.chunk_extra(costs.mbt) / costs.mbt / tokens
        self.latency.learner.observe(sid, predicted, seconds / tokens)
        self.engine_timing_observations += 1

    def stream_timed(
        self,
        sid: str,
        at_admit: tuple[int, int, int],
        prompt_tokens: int,
        sent_at: float,
        first_at: float,
        last_at: float,
        tokens: int,
    ) -> None:
        """A stream relayed start to end by ``sid``: its router-side timing teaches the
        latency correction only when the engine exports no per-token timing of its own
        (the router's clock includes the router's own lag: :meth:`_learn_from_engine`)."""
        up = self.upstreams.get(sid)
        if up is not None and up.engine_timing is not None:
            return
        self.latency.stream_done(sid, at_admit, prompt_tokens, sent_at, first_at, last_at, tokens)

    def _export_loads(self) -> None:
        w = self.metrics.worker
        for sid, up in self.upstreams.items():
            ld = self.policy.server(sid)
            if ld is not None:
                self.metrics.server_running.labels(self.name, sid, up.spec.tier, w).set(ld.running)
                self.metrics.server_kv.labels(self.name, sid, up.spec.tier, w).set(ld.kv_tokens)
            if up.engine_running is not None:
                self.metrics.server_engine_running.labels(self.name, sid, up.spec.tier, w).set(up.engine_running)
        self.metrics.latency_scale.labels(self.name, w).set(self.latency.scale)

    def _tally(self, tallies: dict | None, tier: str):
        if tallies is not None and (self.name, tier) in tallies:
            return tallies[(self.name, tier)]
        return self.metrics.tally(self.name, tier)

    def status(self, tallies: dict | None = None) -> dict:
        return self.model_status(tallies).document()

    def model_status(self, tallies: dict | None = None) -> ModelStatus:
        """This model's part of the router's status document (``kubetier.api.router_status``)."""
        servers = []
        for sid, up in self.upstreams.items():
            ld = self.policy.server(sid)
            servers.append(
                ServerState(
                    id=sid,
                    tier=up.spec.tier,
                    endpoint=f"{up.spec.host}:{up.spec.port}",
                    ready=bool(ld and ld.ready),
                    draining=bool(ld and ld.draining),
                    running=ld.running if ld else 0,
                    kv_tokens=ld.kv_tokens if ld else 0,
                    pooled=up.spec.pooled,
                    power_cap_watts=None
                    if up.spec.power_cap_fraction is None
                    else round(up.spec.power_cap_fraction * self.spec.profile.tdp_watts, 1),
                    engine_running=up.engine_running,
                    router_running_at_scrape=up.router_running_at_scrape,
                )
            )
        decisions = {}
        for t in self.tiers:
            outcomes = {f"{a}/{r}": n for (tt, a, r), n in sorted(self._outcomes.items()) if tt == t}
            queued, waited = self._queue_waits[t]
            decisions[t] = TierDecisions(outcomes=outcomes, queued=int(queued), queue_wait_seconds=round(waited, 3))
        return ModelStatus(
            tiers={t: self._tally(tallies, t).counts() for t in self.tiers},
            servers=servers,
            queue_length=self._waiting,
            shared_pool=self.spec.bin_limits is not None,
            bin_moves=self.bin_moves,
            latency_scale=self.latency.scale,
            latency_observations=self.latency.learner.observations,
            latency_engine_observations=self.engine_timing_observations,
            decisions=decisions,
            view_checks=dict(self.view_checks),
        )


def _wake_one(w: _Waiter) -> None:
    if not w.future.done():
        w.future.set_result(None)


# Engine metric names the router reads: (running, waiting, KV-cache usage fraction).
# vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc (the CPU build of vLLM 0.32 has
# only the new name); the old one is read only when the new one is absent. SGLang's
# token_usage is the share of KV-cache tokens in use.
_RUNNING = {b"vllm:num_requests_running", b"sglang:num_running_reqs"}
_WAITING = {b"vllm:num_requests_waiting", b"sglang:num_queue_reqs"}
_KV = {b"vllm:kv_cache_usage_perc", b"sglang:token_usage"}
_KV_DEPRECATED = b"vllm:gpu_cache_usage_perc"


# The engine's per-token latency histogram, in order of preference (vLLM renamed
# time_per_output_token to inter_token_latency; SGLang exports both names too).
_TOKEN_HISTOGRAMS = (
    b"vllm:inter_token_latency_seconds",
    b"vllm:time_per_output_token_seconds",
    b"sglang:inter_token_latency_seconds",
    b"sglang:time_per_output_token_seconds",
)
_PROMPT_TOKENS = {b"vllm:prompt_tokens_total", b"sglang:prompt_tokens_total"}
_KV_ALL = _KV | {_KV_DEPRECATED}
# Fewest tokens the engine must have generated in a scrape interval for its mean time
# per token to teach the correction (a nearly idle interval says little).
MIN_ENGINE_TOKENS = 16


@dataclass(frozen=True)
class EngineTiming:
    """Cumulative per-token timing an engine reports (counters) and its batch then."""

    seconds: float  # sum of its per-token latency histogram
    tokens: float  # count of that histogram
    prompt_tokens: float  # prompt tokens prefilled (counter)
    running: int  # requests in its batch (gauge)
    kv_fraction: float  # KV-cache usage (gauge)


@dataclass(frozen=True)
class EngineScrape:
    """What the router reads from one engine's /metrics, in one pass over the text."""

    load: tuple[int, float] | None  # (running + waiting, KV-cache usage fraction); None: no running gauge
    timing: EngineTiming | None  # None: no per-token latency histogram
    iterations: float | None  # the engine's step counter (kubetier.router.engine_progress); None: not exported


def parse_engine_scrape(text: bytes) -> EngineScrape:
    """One pass over an engine's /metrics (vLLM or SGLang names) for the load, the
    per-token timing and the step counter. The scrape used to read the text three times
    (load, timing, step counter); every scrape and fresh read (``fresh_read_s``) parses
    one engine's text, so this is the router's CPU per read."""
    running = waiting = prompt = 0.0
    found = False
    kv: float | None = None
    kv_deprecated: float | None = None
    kv_any = 0.0  # the timing's KV: the largest of the new and the deprecated name
    hist: dict[bytes, list[float]] = {}
    iterations: float | None = None
    for line in text.split(b"\n"):
        if not (line.startswith(b"vllm:") or line.startswith(b"sglang:")):
            continue
        name = line.split(b"{", 1)[0].split(b" ", 1)[0]
        try:
            v = float(line.rsplit(b" ", 1)[-1])
        except ValueError:
            continue
        if v != v or v in (_INF, -_INF):
            continue  # NaN or infinite: no count (int() of it made the whole scrape fail)
        if name in _RUNNING:
            running += v
            found = True
        elif name in _WAITING:
            waiting += v
        elif name in _KV:
            kv = max(kv or 0.0, v)
            kv_any = max(kv_any, v)
        elif name == _KV_DEPRECATED:
            kv_deprecated = max(kv_deprecated or 0.0, v)
            kv_any = max(kv_any, v)
        elif name in _PROMPT_TOKENS:
            prompt += v
        elif name == _ITERATIONS:
            iterations = v if iterations is None else iterations + v
        elif name.endswith(b"_sum") or name.endswith(b"_count"):
            base, _, part = name.rpartition(b"_")
            if base in _TOKEN_HISTOGRAMS:
                acc = hist.setdefault(base, [0.0, 0.0])
                acc[0 if part == b"sum" else 1] += v
    timing = None
    for hname in _TOKEN_HISTOGRAMS:
        if hname in hist:
            total, count = hist[hname]
            timing = EngineTiming(total, count, prompt, int(running), kv_any)
            break
    load = None
    if found:
        load = (int(running + waiting), kv if kv is not None else (kv_deprecated or 0.0))
    return EngineScrape(load, timing, iterations)


def parse_engine_timing(text: bytes) -> EngineTiming | None:
    """The engine's own per-token timing from its /metrics (vLLM or SGLang names), or
    None when it exports no per-token latency histogram."""
    return parse_engine_scrape(text).timing


def parse_engine_metrics(text: bytes) -> tuple[int, float] | None:
    """(running + waiting requests, KV-cache usage fraction) from vLLM's or SGLang's /metrics."""
    return parse_engine_scrape(text).load
