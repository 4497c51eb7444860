"""The scenario file format of the fleet simulator (YAML, validated by pydantic).

A scenario says who sends what (workload sources, each tagged with a tier or a tier
mix), what serves it (a fleet of servers per tier, or one shared pool, all with one
latency profile), the SLO tiers, and which policies to compare. A tier is the API's
``kubetier.api.tier.SLOTier``, the same definition as a ModelService tier's SLO fields
(``ttftMs``, ``tpotMs``, ...), so a tier block can be pasted from one to the other. Example (the shipped ones are in
``kubetier/sim/scenarios/``)::

    name: azure-three-tier
    seed: 7
    profile: llama-3.1-8b-h100          # built-in profile name or YAML path
    tiers:
      - {name: interactive, ttftMs: 300, tpotMs: 30, attainmentPercent: 90, priority: 100}
      - {name: standard, ttftMs: 1000, tpotMs: 60, attainmentPercent: 90, priority: 50}
      - {name: batch, ttftMs: 5000, tpotMs: 150, attainmentPercent: 90, priority: 10}
    workload:
      startS: 0                         # window of the sources' own time
      durationS: 600
      maxRequests: 100000
      warmupS: 60                       # arrivals left out of the figures (default 10%)
      cooldownS: 60
      sources:
        - trace: azure_llm_2023_code    # known trace name (in --traces-dir) or a file path
          tier: interactive             # every request of this source -> one tier
        - trace: azure_llm_2023_conv
          mix: {standard: 0.7, batch: 0.3}   # or drawn from a mix
        - synthetic:
            arrival: gamma              # poisson | gamma | diurnal
            rate: 5.0                   # requests/s at rate scale 1
            cv: 3.0                     # gamma only: burstiness (CV of inter-arrival times)
            amplitude: 0.5              # diurnal only
            periodS: 600                # diurnal only
            prompt: {dist: lognormal, mean: 1000, sd: 800, min: 16, max: 16000}
            output: {dist: lognormal, mean: 200, sd: 150, min: 1, max: 2000}
          tier: batch
    fleet:
      servers: {interactive: 4, standard: 4, batch: 2}   # servers per tier ...
      # pool: 10                        # ... or one shared pool (tiers binned dynamically)
      modelLoadS: 60                    # cold start of an added server
    policies: [kubetier, round-robin, least-loaded, static-partition, two-class]
    goodput:
      minScale: 0.5                     # rate scales searched for the goodput
      maxScale: 64
      iterations: 7
      curveScales: [1, 2, 4, 8]         # extra points for the attainment-vs-rate plot
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from kubetier.api.tier import SLOTier

POLICY_NAMES = ("kubetier", "round-robin", "least-loaded", "static-partition", "two-class")


class ScenarioError(ValueError):
    """A scenario that cannot be used; the message names the offending field."""


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


# A scenario's tier is the API's SLO tier (the same block as a ModelService's tier,
# without replicas/capacity/prewarm): one definition, one validation.
Tier = SLOTier


class Length(_Model):
    dist: Literal["fixed", "lognormal", "uniform", "zipf"] = "lognormal"
    mean: float = Field(gt=0)
    sd: float = Field(default=0.0, ge=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=1 << 20, ge=1)


class Synthetic(_Model):
    arrival: Literal["poisson", "gamma", "diurnal"] = "poisson"
    rate: float = Field(gt=0)
    cv: float = Field(default=2.0, gt=0)
    amplitude: float = Field(default=0.5, ge=0, le=1)
    period_s: float = Field(default=3600.0, gt=0)
    prompt: Length
    output: Length


class Source(_Model):
    trace: str | None = None
    synthetic: Synthetic | None = None
    tier: str | None = None
    mix: dict[str, float] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.trace is None) == (self.synthetic is None):
            raise ValueError("give exactly one of trace or synthetic")
        if (self.tier is None) == (self.mix is None):
            raise ValueError("give exactly one of tier or mix")
        if self.mix is not None and (
            not self.mix or any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0
        ):
            raise ValueError("mix needs non-negative weights with a positive sum")
        return self


class Workload(_Model):
    sources: list[Source] = Field(min_length=1)
    start_s: float = Field(default=0.0, ge=0)
    duration_s: float | None = Field(default=None, gt=0)
    max_requests: int | None = Field(default=None, ge=1)
    # Left out of every figure: the first warmupS (an empty fleet fills) and the last
    # cooldownS of arrivals (load falls off while the last measured requests finish).
    # Default: 10% of the window each.
    warmup_s: float | None = Field(default=None, ge=0)
    cooldown_s: float | None = Field(default=None, ge=0)


class Fleet(_Model):
    servers: dict[str, int] | None = None
    pool: int | None = Field(default=None, ge=1)
    model_load_s: float = Field(default=60.0, ge=0)

    @model_validator(mode="after")
    def _one_of(self):
        if (self.servers is None) == (self.pool is None):
            raise ValueError("give exactly one of servers (per tier) or pool")
        if self.servers is not None and (any(n < 0 for n in self.servers.values()) or sum(self.servers.values()) < 1):
            raise ValueError("servers needs non-negative counts and at least one server")
        return self


class Goodput(_Model):
    min_scale: float = Field(default=0.25, gt=0)
    max_scale: float = Field(default=64.0, gt=0)
    iterations: int = Field(default=7, ge=1, le=30)
    curve_scales: list[float] = Field(default_factory=list)


class Scenario(_Model):
    name: str = Field(min_length=1)
    description: str = ""
    seed: int = 1
    profile: str = "llama-3.1-8b-h100"
    tiers: list[Tier] = Field(min_length=1)
    workload: Workload
    fleet: Fleet
    policies: list[Literal["kubetier", "round-robin", "least-loaded", "static-partition", "two-class"]] = Field(
        default_factory=lambda: list(POLICY_NAMES)
    )
    goodput: Goodput = Field(default_factory=Goodput)

    @model_validator(mode="after")
    def _cross_refs(self):
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tiers: duplicate tier names in {names}")
        known = set(names)
        for i, src in enumerate(self.workload.sources):
            used = [src.tier] if src.tier is not None else list(src.mix or {})
            for t in used:
                if t not in known:
                    raise ValueError(f"workload.sources.{i}: unknown tier {t!r} (tiers: {names})")
        if self.fleet.servers is not None:
            for t in self.fleet.servers:
                if t not in known:
                    raise ValueError(f"fleet.servers: unknown tier {t!r} (tiers: {names})")
        if self.goodput.min_scale >= self.goodput.max_scale:
            raise ValueError("goodput.minScale must be below goodput.maxScale")
        return self

    def tier_index(self, name: str) -> int:
        return [t.name for t in self.tiers].index(name)

    def server_tiers(self) -> list[str]:
        """One tier name per server: per-tier counts in tier order, or the pool split
        evenly (remainder to the tightest tiers) so the policy starts from a partition
        that it may rebalance through spill."""
        if self.fleet.servers is not None:
            return [t.name for t in self.tiers for _ in range(self.fleet.servers.get(t.name, 0))]
        n, k = self.fleet.pool or 0, len(self.tiers)
        order = sorted(self.tiers, key=lambda t: t.tpot_ms)
        out = []
        for i, t in enumerate(order):
            out += [t.name] * (n // k + (1 if i < n % k else 0))
        return out


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(lines)


def parse_scenario(data: dict, origin: str = "scenario") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{origin}: expected a mapping at the top level")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{origin}: invalid scenario: {_format_errors(exc)}") from None


def shipped_scenarios() -> list[str]:
    folder = resources.files("kubetier.sim") / "scenarios"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_scenario(name_or_path: str) -> Scenario:
    path = Path(name_or_path)
    if path.is_file():
        text, origin = path.read_text(), str(path)
    else:
        candidate = resources.files("kubetier.sim") / "scenarios" / f"{name_or_path}.yaml"
        if not candidate.is_file():
            raise ScenarioError(
                f"scenario {name_or_path!r}: not a file and not a shipped scenario (shipped: {', '.join(shipped_scenarios())})"
            )
        text, origin = candidate.read_text(), f"{name_or_path}.yaml"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{origin}: not valid YAML: {exc}") from None
    return parse_scenario(data, origin)
