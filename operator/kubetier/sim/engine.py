"""Discrete-event core of the fleet simulator.

Each server behaves like vLLM under continuous batching with chunked prefill: an
iteration carries one token for every running sequence plus up to
``max_num_batched_tokens - running`` prompt tokens of the admitted requests (FIFO); its
duration comes from the latency model. A request is admitted into the engine when a
sequence slot is free and its prompt plus output fit in the KV cache (reserved up front,
so the engine never preempts; vLLM would instead preempt and recompute, which only makes
an overloaded server slower).

Speed (docs/architecture.md, "Fleet simulator speed"): no Python work per token. An iteration that
carries prompt tokens is one event; a stretch of decode-only iterations between two
changes of the batch (a sequence finishing, or a new request that can start prefilling)
is ONE event. Within a stretch the batch is fixed and the KV cache grows by ``batch``
tokens per iteration, so iteration times are (piecewise) linear in the iteration index:
the stretch is costed as an arithmetic series from its first and last iteration times.
Per-token deadlines (token k due at ``arrival + TTFT + (k-1)*TPOT``) are checked
exactly without looking at every token: within a stretch a sequence's slack is concave
in the iteration index, so its worst token is the first or last one of the stretch, and
among the sequences of one tier on one server the one with the smallest deadline key is
the worst at every iteration, so one heap per (server, tier) finds every miss.
The module is also compiled with mypyc, with the policy's hot modules, when asked for
(``kubetier.sim.native``: 2.0-2.7x faster, same results bit for bit, sim/README.md
"Simulator speed, round 4"), so it stays type-clean; ``tests/sim/test_engine_equivalence.py``
holds every outcome to a frozen copy of the engine from before the speed work.

Routing goes through :class:`kubetier.policy.routing.RoutingPolicy`, called the same way
the router calls it: ``decide`` on arrival (and on retries of a ``wait``), ``on_admit``,
plus ``observe`` with the exact engine state after every step (the router gets the same
correction from the engines' /metrics). Prefill completions and finishes happen only
at the end of a step, right before that ``observe``, which overwrites every field that
``on_prefill_done`` / ``on_finish`` would change, so the simulator skips those two calls
(the policy state, and so every decision, is the same; two calls fewer per request).
"""

from __future__ import annotations

import gc
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final, cast

from kubetier.policy.latency import LatencyModel
from kubetier.policy.latency_learning import LatencyCorrection
from kubetier.policy.routing import RoutingPolicy, ServerLoad, TierSLO
from kubetier.policy.waiting import waiting_key

from .hooks import Hook, OutcomeSink

# Final: the compiled simulator keeps them in C statics (a module attribute or global
# is a dictionary lookup per call there)
_heappush: Final = heapq.heappush
_heappop: Final = heapq.heappop
_heapify: Final = heapq.heapify

# How long a request told to "wait" without a retry hint waits before it asks again; it
# is also retried as soon as any server finishes work, so this only bounds the staleness.
DEFAULT_RETRY_S: Final = 0.1
MIN_RETRY_S: Final = 0.01
RETRY_COALESCE_S: Final = 0.01

# What the event loop needs of an arrival: (t, prompt_tokens, output_tokens, tier), which
# a :class:`kubetier.sim.workload.Arrival` is; the runner feeds plain tuples (no named tuple built per request).
ArrivalRow = tuple[float, int, int, int]

# Superseded step-end entries (a cut decode stretch leaves its old entry behind) are
# dropped from the event heap in one pass once they are this many and half of it: at
# 1,000 servers they had made the heap ~5x the number of servers.
_STALE_COMPACT_MIN = 64

_REJECTED: Final = 2  # Request.state values
_DONE: Final = 1


class Request:
    __slots__ = (
        "base",
        "failed",
        "finish_iter",
        "output",
        "prefill_left",
        "prompt",
        "rid",
        "server",
        "spilled",
        "state",
        "t_arr",
        "t_first",
        "t_start",
        "tier",
        "waiting",
    )

    def __init__(self, rid: int, a: ArrivalRow):
        self.rid = rid
        # one unpack instead of four named-field reads (this runs once per request)
        self.t_arr, self.prompt, self.output, self.tier = a
        self.server: Server | None = None
        self.prefill_left = self.prompt
        self.t_first = -1.0
        self.failed = False  # some token missed its deadline
        self.finish_iter = 0
        self.state = 0
        self.spilled = False
        self.t_start = -1.0  # first prefill chunk scheduled (end of queueing)
        self.base = 0  # tokens streamed before a migration (spot preemption)
        self.waiting = False  # held by the router after a "wait" decision


class Server:
    """One engine replica. ``step_*`` describe the step in flight (one event)."""

    __slots__ = (
        "G",
        "budget",
        "busy",
        "busy_s",
        "decode_s",
        "draining",
        "ended_at",
        "energy_j",
        "idx",
        "iter_s",
        "kv",
        "kv_cap",
        "max_seqs",
        "model",
        "n_active",
        "n_running",
        "prefilling",
        "queued_prefill",
        "ready_at",
        "removed",
        "reserved",
        "running_heap",
        "served",
        "sid",
        "slowdown",
        "spilled_in",
        "started_at",
        "step_B",
        "step_a",
        "step_b",
        "step_chunks",
        "step_end",
        "step_n",
        "step_p",
        "step_seq",
        "step_t0",
        "tier",
        "tier_heaps",
        "tokens_out",
        "up_since",
        "version",
        "waiting",
    )

    def __init__(self, idx: int, sid: str, tier: str, model: LatencyModel, ready_at: float = 0.0):
        self.idx = idx
        self.sid = sid
        self.tier = tier
        self.model = model
        self.slowdown = 1.0  # power capping multiplies iteration times
        self.ready_at = ready_at
        self.up_since = ready_at
        self.started_at = 0.0  # when the server was asked for (model loading is paid for too)
        self.ended_at = math.inf  # when it was removed
        self.removed = False
        self.draining = False
        self.waiting: deque[Request] = deque()  # routed, not yet admitted into the engine
        self.prefilling: deque[Request] = deque()  # admitted, prompt not fully prefilled
        self.running_heap: list = []  # (finish_iter, rid, req) of decoding sequences
        self.n_running = 0
        self.tier_heaps: dict[int, list] = {}  # tier -> [(deadline key, rid, req)]
        self.G = 0  # iterations completed (each gives every running sequence one token)
        self.kv = 0  # KV tokens actually held
        self.reserved = 0  # KV tokens reserved by admitted requests (prompt + output)
        self.n_active = 0  # admitted sequences (prefilling + running)
        self.queued_prefill = 0  # prompt tokens routed here and not yet prefilled
        self.busy = False
        self.version = 0
        self.step_seq = 0  # seq of the live step-end event (0: none); older entries are stale
        self.step_t0 = self.step_a = self.step_b = self.step_end = 0.0
        self.step_n = self.step_B = 0
        self.step_chunks: list | None = None
        self.step_p = 0  # prompt tokens carried by the step in flight
        self.busy_s = 0.0
        self.energy_j = 0.0
        self.served = 0
        self.tokens_out = 0
        self.spilled_in = 0
        self.max_seqs = model.max_num_seqs
        self.kv_cap = model.kv_capacity_tokens
        self.budget = model.max_num_batched_tokens
        self.decode_s = model.decode_iteration_s
        self.iter_s = model.iteration_s


@dataclass
class SimConfig:
    tiers: list[TierSLO]
    server_tiers: list[str]  # one tier name per initial server
    model: LatencyModel
    policy_kind: str = "slo"
    seed: int = 1
    model_load_s: float = 60.0
    track_power: bool = False
    hooks: list[Hook] = field(default_factory=list)
    rebin_idle: bool = False  # shared pool: the policy may move idle servers between bins
    # Requests arriving outside [measure_from_s, measure_until_s) are simulated but not
    # recorded (warm-up and cool-down are left out of every figure).
    measure_from_s: float = 0.0
    measure_until_s: float = math.inf
    # Learn a latency correction online (kubetier.policy.latency_learning) from the
    # engines' step timings, each seen with lognormal noise of this sigma.
    learn_latency: bool = False
    timing_noise: float = 0.2


class Simulator:
    def __init__(self, cfg: SimConfig, sink: OutcomeSink | None = None, policy: RoutingPolicy | None = None):
        import random

        self.cfg = cfg
        self.tiers = cfg.tiers
        # The profile's request overhead (HTTP, tokenization) delays every token a client
        # sees by the same amount: it comes off each tier's first-token budget.
        self.overhead_s = cfg.model.request_overhead_s
        self.ttft_s = [t.ttft_ms / 1000.0 - self.overhead_s for t in cfg.tiers]
        self.tpot_s = [t.tpot_ms / 1000.0 for t in cfg.tiers]
        self.exp_out = [t.mean_output_tokens for t in cfg.tiers]
        self.tier_names = [t.name for t in cfg.tiers]
        self.rng = random.Random(cfg.seed)
        if policy is None:
            if cfg.rebin_idle:
                policy = RoutingPolicy(list(cfg.tiers), kind=cfg.policy_kind, rng=self.rng, rebin_idle=True)
            else:
                policy = RoutingPolicy(list(cfg.tiers), kind=cfg.policy_kind, rng=self.rng)
        self.policy = policy
        self.sink = sink
        self._m_from = cfg.measure_from_s
        self._m_until = cfg.measure_until_s
        self.servers: list[Server] = []
        self.by_sid: dict[str, Server] = {}
        self.events: list = []  # (t, seq, kind, payload)
        self._seq = 0
        self._stale = 0  # superseded step-end entries still in the heap
        self.heap_compactions = 0  # times _drop_stale ran (a benchmark figure)
        self._stale_max_t = -math.inf  # latest time of a superseded entry dropped unpopped
        self.now = 0.0
        # Requests the policy told to wait (the router holds them), in the router's order
        # (kubetier.policy.waiting.waiting_key): a heap of (key, request).
        self.waitq: list[tuple[tuple[int, float, int], Request]] = []
        self._prio = [t.priority for t in cfg.tiers]
        self.n_waiting = 0
        self._wait_timer_at = math.inf
        self.n_arrived = 0
        self.n_done = 0
        self.n_rejected = 0
        self.n_waits = 0
        self.n_broken = 0  # streams cut by a server removed without migration
        self.steps = 0
        self._track_power = cfg.track_power
        self.stop = False  # set by the outcome sink to end a run early
        # The policy's methods are called through ``self.policy`` in the hot loop (a
        # direct native call in the compiled simulator; a stored bound method is a
        # generic Python call there); ``_decide`` stays an attribute (spot.py wraps it).
        self._decide = self.policy.decide
        self._on_admit = self.policy.on_admit
        self._on_prefill_done = self.policy.on_prefill_done
        self._on_finish = self.policy.on_finish
        self._observe = self.policy.observe
        self._on_request_done = self.policy.on_request_done
        self.learner: LatencyCorrection | None = None
        if cfg.learn_latency:
            self.learner = LatencyCorrection(self.policy)
        for tier in cfg.server_tiers:
            self.add_server(tier, ready_after_s=0.0)
        if self.learner is not None:
            self.learner.reset()  # memos are shared per model: start from the profile
        for hook in cfg.hooks:
            for t, cb in hook.schedule():
                self._push(t, 3, cb)
            if hook.interval_s > 0:
                self._push(hook.interval_s, 4, hook)

    # ------------------------------------------------------------------ fleet control (hooks)

    def add_server(self, tier: str, ready_after_s: float | None = None) -> Server:
        """Start a server for ``tier``; it takes traffic after the model-load time."""
        delay = self.cfg.model_load_s if ready_after_s is None else ready_after_s
        idx = len(self.servers)
        srv = Server(idx, f"s{idx}-{tier}", tier, self.cfg.model, ready_at=self.now + delay)
        srv.started_at = self.now
        self.servers.append(srv)
        self.by_sid[srv.sid] = srv
        self.policy.upsert_server(ServerLoad(server_id=srv.sid, tier=tier, model=self.cfg.model, ready=delay <= 0))
        if delay > 0:
            self._push(self.now + delay, 5, srv)
        return srv

    def drain_server(self, srv: Server) -> None:
        """Stop routing new requests to ``srv`` (a spot notice or a scale-in); in-flight work continues."""
        srv.draining = True
        self.policy.upsert_server(
            ServerLoad(
                server_id=srv.sid,
                tier=srv.tier,
                model=srv.model,
                ready=True,
                draining=True,
                running=srv.n_active,
                kv_tokens=srv.kv,
                queued_prefill_tokens=srv.queued_prefill,
            )
        )

    def remove_server(self, srv: Server, migrate: bool = True) -> None:
        """The server disappears (spot preemption, or a drained server given back).

        ``migrate``: its unfinished requests go back to the router as continuations: prompt
        plus the tokens already streamed, the rest of the output, same arrival time and
        per-token deadlines (the client sees one stream). Without it a started stream breaks:
        the client retries from scratch (the whole prompt and output again, same deadlines),
        the request counts as missed and ``n_broken`` counts it.
        """
        if srv.removed:
            return
        srv.removed = True
        srv.ended_at = self.now
        if srv.busy:
            self._stale += 1
        srv.busy = False
        srv.version += 1
        srv.step_seq = 0
        srv.up_since = self.now - srv.up_since  # becomes the server's lifetime (see gpu_seconds)
        self.policy.remove_server(srv.sid)
        orphans = list(srv.waiting) + list(srv.prefilling) + [e[2] for e in srv.running_heap if not e[2].state]
        srv.waiting.clear()
        srv.prefilling.clear()
        srv.running_heap.clear()
        srv.tier_heaps.clear()
        for req in orphans:
            if not migrate and (req.t_first >= 0 or req.base):
                self.n_broken += 1
                req.failed = True
                req.prompt -= req.base
                req.output += req.base
                req.base = 0
            elif req.t_first >= 0:
                streamed = 1 + srv.G - (req.finish_iter - req.output + 1)  # tokens out so far
                streamed = max(1, min(req.output - 1, streamed))
                req.prompt += streamed
                req.output -= streamed
                req.base += streamed
            req.prefill_left = req.prompt
            req.server = None
            self._route(req, self.now)

    def call_at(self, t: float, callback: Callable[[Simulator, float], None]) -> None:
        """Run ``callback(sim, t)`` at simulated time ``t`` (hooks' timed actions)."""
        self._push(max(t, self.now), 3, callback)

    def server_lifetimes(self) -> Iterator[tuple[float, float, Server]]:
        """(asked for, removed or now, server) for every server ever started."""
        for srv in self.servers:
            yield srv.started_at, min(srv.ended_at, self.now), srv

    def set_slowdown(self, srv: Server, factor: float) -> None:
        """Power capping: iterations take ``factor`` (>= 1) times longer from the next step on."""
        srv.slowdown = max(1.0, factor)

    def set_model(self, srv: Server, model: LatencyModel) -> None:
        """Power capping: ``srv`` runs, and is routed, as ``model`` (its capped latency model)
        from the next iteration on; a decode stretch in flight is cut at the next iteration
        boundary (a locked clock takes effect in milliseconds, not at the end of a stretch)."""
        srv.model = model
        srv.decode_s = model.decode_iteration_s
        srv.iter_s = model.iteration_s
        if srv.removed:
            return
        if srv.busy and srv.step_chunks is None and srv.step_n > 1:
            self._cut_stretch(srv, self.now)
        self.policy.upsert_server(
            ServerLoad(
                server_id=srv.sid,
                tier=srv.tier,
                model=model,
                ready=self.now >= srv.ready_at,
                draining=srv.draining,
                running=srv.n_active + len(srv.waiting),
                kv_tokens=srv.kv + srv.queued_prefill,
                queued_prefill_tokens=srv.queued_prefill,
            )
        )

    def gpu_seconds(self) -> float:
        """Server lifetime summed over the fleet (idle time included: a GPU held is paid for)."""
        total = 0.0
        for srv in self.servers:
            total += srv.up_since if srv.removed else max(0.0, self.now - srv.up_since)
        return total

    # ------------------------------------------------------------------ event loop

    def _push(self, t: float, kind: int, payload) -> None:
        self._seq += 1
        _heappush(self.events, (t, self._seq, kind, payload))

    def run(self, arrivals: Iterable[ArrivalRow], progress: Callable[[int], None] | None = None) -> None:
        # The loop allocates a few short-lived objects per request and frees them by
        # reference counting; the cyclic collector would repeatedly scan every live
        # request and heap entry for nothing (measured: a large share of the run time).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._run(arrivals, progress)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self, arrivals: Iterable[ArrivalRow], progress: Callable[[int], None] | None) -> None:
        events = self.events
        heappop = _heappop
        it = iter(arrivals)
        nxt = next(it, None)
        t_next = math.inf if nxt is None else nxt[0]
        rid = 0
        step_end = self._step_end
        route = self._route
        while not self.stop:  # stop: the sink decided the outcome is settled (goodput search)
            if events and events[0][0] <= t_next:
                t, seq, kind, payload = heappop(events)
                self.now = t
                if kind == 0:  # a server's step ends: payload = the server
                    if seq == payload.step_seq:
                        step_end(payload, t)
                    else:  # superseded (a cut stretch, a removed server)
                        self._stale -= 1
                elif kind == 1:  # retry the requests the router holds
                    if t == self._wait_timer_at:  # else superseded by an earlier timer
                        self._wait_timer_at = math.inf
                        self._retry_waiting(t)
                elif kind == 3:
                    payload(self, t)
                elif kind == 4:
                    payload.on_tick(self, t)
                    if nxt is not None or self.n_done + self.n_rejected < self.n_arrived:
                        self._push(t + payload.interval_s, 4, payload)
                elif kind == 5:  # a cold-started server finished loading its model
                    if not payload.removed:
                        self.policy.upsert_server(
                            ServerLoad(
                                server_id=payload.sid, tier=payload.tier, model=payload.model, draining=payload.draining
                            )
                        )
                        if self.n_waiting:
                            self._retry_waiting(t)
            elif nxt is not None:
                self.now = t_next
                req = Request(rid, nxt)
                rid += 1
                route(req, t_next)
                nxt = next(it, None)
                t_next = math.inf if nxt is None else nxt[0]
                if progress is not None and not (rid & 0x3FFF):
                    progress(rid)
            else:
                # ran dry: end where popping the dropped superseded entries would have
                if self._stale_max_t > self.now:
                    self.now = self._stale_max_t
                break
        self.n_arrived = rid
        if progress is not None:
            progress(rid)

    # ------------------------------------------------------------------ routing

    def _route(self, req: Request, now: float) -> bool:
        """Ask the policy; True when the request left the router (routed or rejected)."""
        tier = req.tier
        d = self._decide(self.tier_names[tier], req.prompt, now - req.t_arr)
        action = d.action
        if action == "route":
            srv = self.by_sid[cast(str, d.server_id)]  # a "route" always names its server
            if d.spilled:
                req.spilled = True
                srv.spilled_in += 1
            self.policy.on_admit(srv.sid, req.prompt, self.exp_out[tier], self.tier_names[tier])
            self._enqueue(srv, req, now)
            return True
        if action == "reject":
            req.state = _REJECTED
            self.n_rejected += 1
            if self.sink is not None and self._m_from <= req.t_arr < self._m_until:
                self.sink.record(tier, math.inf, math.inf, False, True, req.spilled, now - req.t_arr, -1)
            return True
        # wait: the router holds it and asks again when a server frees capacity, or when
        # the policy's retry hint (or DEFAULT_RETRY_S) expires, whichever comes first
        self.n_waits += 1
        if not req.waiting:
            req.waiting = True
            self._seq += 1
            _heappush(self.waitq, (waiting_key(self._prio[tier], req.t_arr, self._seq), req))
            self.n_waiting += 1
        # Ask again when the policy's hint says it turns late (to reject or queue it), at
        # least every DEFAULT_RETRY_S, and never at the same instant (no progress then).
        hint = d.retry_after_s if d.retry_after_s else DEFAULT_RETRY_S
        retry_at = now + min(max(hint, MIN_RETRY_S), DEFAULT_RETRY_S)
        if retry_at < self._wait_timer_at:
            self._wait_timer_at = retry_at
            self._push(retry_at, 1, None)
        return False

    def _retry_waiting(self, now: float) -> None:
        # In the router's waiting order; once a tier gets "wait", its later requests are
        # not asked again in this pass (they would get the same answer), and the pass
        # ends when every tier has waited (bounded work per freed slot).
        q = self.waitq
        held = []
        waited: set[int] = set()
        n_tiers = len(self.tiers)
        while q and len(waited) < n_tiers:
            item = _heappop(q)
            req = item[1]
            if req.tier in waited:
                held.append(item)
                continue
            if self._route(req, now):  # still marked waiting, so a "wait" does not queue it twice
                req.waiting = False
                self.n_waiting -= 1
            else:
                held.append(item)
                waited.add(req.tier)
        for item in held:
            _heappush(q, item)
        if self.n_waiting and self._wait_timer_at == math.inf:
            self._wait_timer_at = now + DEFAULT_RETRY_S
            self._push(self._wait_timer_at, 1, None)

    # ------------------------------------------------------------------ the engine

    def _enqueue(self, srv: Server, req: Request, now: float) -> None:
        req.server = srv
        srv.waiting.append(req)
        srv.queued_prefill += req.prefill_left
        if not srv.busy:
            self._plan(srv, now)
        elif srv.step_chunks is None and srv.step_n > 1 and len(srv.waiting) == 1 and not srv.prefilling:
            # A decode stretch is in flight and this request can start prefilling: cut
            # the stretch at the first iteration boundary at or after now.
            if srv.n_active < srv.max_seqs and srv.reserved + req.prompt + req.output <= srv.kv_cap:
                self._cut_stretch(srv, now)

    def _cut_stretch(self, srv: Server, now: float) -> None:
        dt = now - srv.step_t0
        a, b, n = srv.step_a, srv.step_b, srv.step_n
        # smallest i >= 1 with i*a + b*i*(i-1)/2 >= dt (the stretch's cumulative time)
        if b <= 1e-15:
            i = max(1, math.ceil(dt / a - 1e-12))
        else:
            c = a - b / 2.0
            i = max(1, math.ceil((-c + math.sqrt(c * c + 2.0 * b * dt)) / b - 1e-12))
        while i > 1 and (i - 1) * a + b * (i - 1) * (i - 2) / 2.0 >= dt:
            i -= 1
        while i * a + b * i * (i - 1) / 2.0 < dt:
            i += 1
        if i >= n:
            return
        srv.step_n = i
        srv.step_end = srv.step_t0 + i * a + b * i * (i - 1) / 2.0
        srv.version += 1
        self._seq = seq = self._seq + 1
        srv.step_seq = seq
        _heappush(self.events, (srv.step_end, seq, 0, srv))
        self._stale = stale = self._stale + 1  # the stretch's old entry
        if stale >= _STALE_COMPACT_MIN and 2 * stale > len(self.events):
            self._drop_stale()

    def _drop_stale(self) -> None:
        """Remove superseded step-end entries from the event heap, in place.

        Live entries keep their (time, seq) keys, which are unique, so they still pop in
        exactly the same order. A superseded entry did nothing when popped except set
        ``now``, so the latest dropped time is kept: when the loop runs dry, ``now`` (the
        makespan) is what it would have been had those entries been popped.
        """
        events = self.events
        live = []
        latest = self._stale_max_t
        for e in events:
            if e[2] == 0 and e[1] != e[3].step_seq:
                if e[0] > latest:
                    latest = e[0]
            else:
                live.append(e)
        _heapify(live)
        events[:] = live
        self._stale_max_t = latest
        self._stale = 0
        self.heap_compactions += 1

    def _plan(self, srv: Server, now: float) -> None:
        """Choose the next step of ``srv`` at time ``now`` and schedule its end."""
        B = srv.n_running
        budget = srv.budget - B
        chunks: list[tuple[Request, int]] | None = None
        p = 0
        pairs = 0  # attention of each chunk to its prompt's earlier chunks
        if budget > 0 and (srv.prefilling or srv.waiting):
            chunks = []
            for req in srv.prefilling:
                c = req.prefill_left if req.prefill_left < budget else budget
                chunks.append((req, c))
                budget -= c
                if budget <= 0:
                    break
            waiting = srv.waiting
            while budget > 0 and waiting:
                req = waiting[0]
                need = req.prompt + req.output
                if srv.n_active >= srv.max_seqs or srv.reserved + need > srv.kv_cap:
                    if srv.n_active == 0:
                        # larger than the whole KV cache: no engine could ever take it
                        waiting.popleft()
                        srv.queued_prefill -= req.prefill_left
                        self._on_finish(srv.sid, req.prompt, 0)
                        req.state = _REJECTED
                        self.n_rejected += 1
                        if self.sink is not None and self._m_from <= req.t_arr < self._m_until:
                            self.sink.record(
                                req.tier, math.inf, math.inf, False, True, req.spilled, now - req.t_arr, srv.idx
                            )
                        continue
                    break  # head-of-line blocking, as in vLLM's FCFS scheduler
                waiting.popleft()
                srv.prefilling.append(req)
                srv.n_active += 1
                srv.reserved += need
                if req.t_start < 0:
                    req.t_start = now
                c = req.prefill_left if req.prefill_left < budget else budget
                chunks.append((req, c))
                budget -= c
            if chunks:
                for r, c in chunks:
                    p += c
                    pairs += c * (r.prompt - r.prefill_left)
            else:
                chunks = None
        srv.step_t0 = now
        srv.step_B = B
        slow = srv.slowdown
        if chunks is not None:
            dt = srv.model.iteration_s(B, srv.kv, p, pairs) * slow
            srv.step_chunks = chunks
            srv.step_p = p
            srv.step_n = 1
            srv.step_a = dt
            srv.step_b = 0.0
            end = now + dt
        elif B > 0:
            n = srv.running_heap[0][0] - srv.G
            if n < 1:
                n = 1
            a = srv.model.decode_iteration_s(B, srv.kv) * slow
            if n > 1:
                b = (srv.model.decode_iteration_s(B, srv.kv + B * (n - 1)) * slow - a) / (n - 1)
            else:
                b = 0.0
            srv.step_chunks = None
            srv.step_n = n
            srv.step_a = a
            srv.step_b = b
            end = now + n * a + b * n * (n - 1) / 2.0
        else:
            srv.busy = False
            return
        srv.busy = True
        srv.step_end = end
        srv.version += 1
        self._seq = seq = self._seq + 1
        srv.step_seq = seq
        _heappush(self.events, (end, seq, 0, srv))

    def _step_end(self, srv: Server, t: float) -> None:
        self.steps += 1
        n = srv.step_n
        B = srv.step_B
        G0 = srv.G
        G = G0 + n
        srv.G = G
        t0 = srv.step_t0
        srv.busy_s += t - t0
        if self.learner is not None and t > t0:
            # the engine's own timing of this step (vLLM exposes it as iteration
            # histograms), against what the profile predicts for it
            obs = (t - t0) * math.exp(self.rng.gauss(0.0, self.cfg.timing_noise))
            self.learner.observe(srv.sid, (t - t0) / srv.slowdown, obs)
        chunks = srv.step_chunks
        p = srv.step_p if chunks is not None else 0
        if self._track_power:
            srv.energy_j += srv.model.power_watts(B, p) * (t - t0)
        freed = False
        if B:
            srv.kv += B * n
            srv.tokens_out += B * n
            # Per-token deadlines over the stretch: the worst token of a sequence is the
            # stretch's first or last; the worst sequence of a tier has the smallest key.
            t_first_iter = t0 + srv.step_a
            tpot = self.tpot_s
            for tier, heap in srv.tier_heaps.items():
                if not heap:
                    continue
                P = tpot[tier]
                first_due = (G0 + 1) * P - t_first_iter + 1e-9
                last_due = G * P - t + 1e-9
                while heap:
                    key, _, req = heap[0]
                    if req.state or req.failed or req.server is not srv:
                        _heappop(heap)
                        continue
                    if key + first_due < 0.0 or key + last_due < 0.0:
                        req.failed = True
                        _heappop(heap)
                        continue
                    break
            rh = srv.running_heap
            while rh and rh[0][0] <= G:
                req = _heappop(rh)[2]
                srv.n_running -= 1
                self._finish(srv, req, t)
                freed = True
        if chunks is not None:
            srv.kv += p
            srv.queued_prefill -= p
            ttft = self.ttft_s
            for req, c in chunks:
                left = req.prefill_left - c
                req.prefill_left = left
                if left:
                    continue
                srv.prefilling.popleft()
                freed = True
                tier = req.tier
                P = self.tpot_s[tier]
                if req.t_first < 0:
                    req.t_first = t
                # the token out now is token base+1, due at t_arr + ttft + base*tpot
                if t - req.t_arr > ttft[tier] + req.base * P + 1e-9:
                    req.failed = True
                # (no policy.on_prefill_done: the observe() closing this step supersedes it)
                if req.output <= 1:
                    self._finish(srv, req, t)
                    continue
                srv.kv += 1
                req.finish_iter = G + req.output - 1
                srv.n_running += 1
                _heappush(srv.running_heap, (req.finish_iter, req.rid, req))
                if not req.failed:
                    # token k is out at iteration G + k - 1 - base and due at
                    # t_arr + ttft + (k-1)*tpot, i.e. at key + iteration*tpot
                    th = srv.tier_heaps.get(tier)
                    if th is None:
                        th = srv.tier_heaps[tier] = []
                    elif len(th) > 2 * srv.n_running + 32:
                        # finished sequences leave their entries behind (lazy deletion);
                        # compact so memory stays O(running), not O(requests served)
                        th[:] = [e for e in th if not e[2].state and not e[2].failed]
                        _heapify(th)
                    _heappush(th, (req.t_arr + ttft[tier] + (req.base - G) * P, req.rid, req))
        # what the engine reports: requests running or waiting in it (vLLM's
        # num_requests_running + num_requests_waiting), KV committed (held now plus the
        # prompts still to prefill, as the policy's own on_admit accounting counts it),
        # prompt tokens still to prefill
        self.policy.observe(
            srv.sid, srv.n_active + len(srv.waiting), srv.kv + srv.queued_prefill, srv.queued_prefill, n
        )
        if srv.removed:
            srv.busy = False
            return
        self._plan(srv, t)
        if freed and self.n_waiting and self._wait_timer_at > t + RETRY_COALESCE_S:
            # capacity freed: the router retries its held requests shortly (coalesced, so
            # an overloaded fleet costs one retry pass per RETRY_COALESCE_S, not per step)
            self._wait_timer_at = t + RETRY_COALESCE_S
            self._seq += 1
            _heappush(self.events, (self._wait_timer_at, self._seq, 1, None))

    def _finish(self, srv: Server, req: Request, t: float) -> None:
        req.state = _DONE
        need = req.prompt + req.output
        srv.n_active -= 1
        srv.kv -= need
        if srv.kv < 0:
            srv.kv = 0
        srv.reserved -= need
        srv.served += 1
        self.n_done += 1
        self.policy.on_request_done(self.tier_names[req.tier], req.output + req.base)
        # No policy.on_finish: _finish runs only inside _step_end, whose closing observe()
        # sets the exact state.
        if self.sink is not None and self._m_from <= req.t_arr < self._m_until:
            tpot = (t - req.t_first) / (req.output + req.base - 1) if req.output + req.base > 1 else 0.0
            queue = req.t_start - req.t_arr if req.t_start >= 0 else 0.0
            self.sink.record(
                req.tier,
                req.t_first - req.t_arr + self.overhead_s,
                tpot,
                not req.failed,
                False,
                req.spilled,
                queue,
                srv.idx,
            )
