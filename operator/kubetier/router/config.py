"""The router's static configuration (``kubetier router --config FILE``) and the shape
the cluster discovery fills in too.

FILE (YAML)::

    routing: {kind: slo, scaleUpSeconds: 0}      # optional; kind: slo | least-loaded | round-robin
    models:
      - name: llama-3.1-8b                       # the "model" clients send
        profile: llama-3.1-8b-h100               # built-in profile name, YAML path, or inline mapping
        maxPromptTokens: 32768                   # optional: longer prompts get 400
        tiers:
          - {name: interactive, ttftMs: 300, tpotMs: 30, priority: 100, meanOutputTokens: 256, onLate: reject}
          - {name: batch, ttftMs: 10000, tpotMs: 150, priority: 10, onLate: queue}
        servers:                                 # engines serving this model under `name`, e.g.
          # kubetier engine-sim --port 8001 --model llama-3.1-8b  (else the engine 404s)
          - {url: "http://127.0.0.1:8001", tier: interactive}
          - {url: "http://127.0.0.1:8002", tier: batch, id: batch-0}
    apiKeys:                                     # optional; absent = no authentication, every tier open
      - {key: sk-team-a, tiers: [interactive, batch]}           # tier names, any model that has them
      - {keyEnv: TEAM_B_KEY, tiers: [batch], models: [llama-3.1-8b]}

Errors name the offending field (``models[0].tiers[1].tpotMs: ...``); unknown fields
are refused. The file's shape is the pydantic model :class:`RouterConfigFile`; a tier is
the API's ``SLOTier`` and an inline profile the API's ``LatencyProfile`` (one definition
each, ``kubetier.api``); :func:`parse_config` adds the cross-references (server tiers,
duplicate names, API-key environment variables, built-in profile names).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from kubetier.api.errors import describe
from kubetier.api.tier import SLOTier
from kubetier.policy.bins import BinLimits
from kubetier.policy.latency import LatencyModel, ProfileError, load_profile
from kubetier.policy.routing import KINDS, TierSLO


class ConfigError(ValueError):
    """The router configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class ServerSpec:
    server_id: str
    host: str
    port: int
    tier: str
    ready: bool = True
    draining: bool = False
    # A preemption notice's deadline (epoch seconds): streams still running shortly
    # before it move to another server at token level (kubetier.policy.spot).
    leave_by: float | None = None
    # A server of a shared pool (spec.sharedPool): ``tier`` is the bin the router put it
    # in, and the router moves it between bins (kubetier.policy.bins).
    pooled: bool = False
    # Deadline-aware draining: a server under notice still takes new requests until
    # then (epoch seconds; kubetier.policy.spot.admit_until, written by the operator).
    admit_until: float | None = None
    # The share of its maximum draw the server's node is power-capped at (the Node's
    # kubetier.io/power-cap and power-report annotations; None: uncapped). The fleet
    # routes it with the profile's capped latency model (kubetier.policy.power_cap).
    power_cap_fraction: float | None = None


@dataclass
class ModelSpec:
    name: str
    profile: LatencyModel
    tiers: list[TierSLO]
    servers: list[ServerSpec] = field(default_factory=list)
    max_prompt_tokens: int = 131072
    public: bool = False  # no API key needed, every tier open (no keys configured for it)
    # A shared pool's per-tier bin limits (routing document ``sharedPool``); None: the
    # servers are tied to their tiers.
    bin_limits: dict[str, BinLimits] | None = None


@dataclass
class RouterConfig:
    models: dict[str, ModelSpec]
    # api key -> {model name or "*": allowed tier names}; empty = no authentication
    keys: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    kind: str = "slo"
    scale_up_s: float = 0.0


# --------------------------------------------------------------------------- the file's shape


class _FileModel(BaseModel):
    # A typo (`onlate`, `maxPromptToken`) would otherwise fall back to the default
    # without a word: unknown fields are refused.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def parse_url(url: str, where: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} must be http://host:port (TLS to engines is not supported)")
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"{where}: {url!r} has an invalid port") from None
    return parts.hostname, port


class RoutingSection(_FileModel):
    kind: str = Field(default="slo", description=f"Routing policy: {', '.join(KINDS)}.")
    scale_up_seconds: float = Field(default=0.0, ge=0, description="Expected time for a scale-up to land.")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"{kind!r} is not one of {', '.join(KINDS)}")
        return kind


class ServerEntry(_FileModel):
    url: str = Field(description="http://host:port of an engine serving this model.")
    tier: str
    id: str | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        try:
            parse_url(url, "url")
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("url: ")) from None
        return url


class ModelEntry(_FileModel):
    name: str = Field(min_length=1, description="The `model` clients send.")
    profile: str | dict[str, Any] = Field(description="Built-in profile name, YAML path, or inline profile.")
    max_prompt_tokens: int | None = Field(default=None, ge=1, description="Longer prompts get 400.")
    tiers: list[SLOTier] = Field(min_length=1)
    servers: list[ServerEntry] = Field(default_factory=list)

    @field_validator("profile", mode="before")
    @classmethod
    def _name_or_mapping(cls, v: Any) -> Any:
        if not isinstance(v, (str, dict)):
            raise ValueError("must be a profile name, a YAML path or an inline profile mapping")
        return v


class ApiKeyEntry(_FileModel):
    key: str | None = Field(default=None, min_length=1)
    key_env: str | None = Field(default=None, min_length=1, description="Environment variable holding the key.")
    tiers: list[str] = Field(min_length=1, description="Tier names the key may use.")
    models: list[str] = Field(default_factory=lambda: ["*"], description="Models the grant applies to; * = any.")

    @model_validator(mode="after")
    def _one_source(self) -> ApiKeyEntry:
        if self.key is None and self.key_env is None:
            raise ValueError("needs 'key' or 'keyEnv'")
        return self


class RouterConfigFile(_FileModel):
    """The router's static configuration file (module docstring)."""

    models: list[ModelEntry]
    api_keys: list[ApiKeyEntry] = Field(default_factory=list)
    routing: RoutingSection = Field(default_factory=RoutingSection)

    @field_validator("api_keys", "routing", mode="before")
    @classmethod
    def _null_is_default(cls, v: Any, info: Any) -> Any:
        if v is None:
            return [] if info.field_name == "api_keys" else {}
        return v


# --------------------------------------------------------------------------- to the router's view


def parse_profile(v: Any, where: str) -> LatencyModel:
    try:
        if isinstance(v, dict):
            return LatencyModel.from_dict(v)
        if isinstance(v, str):
            return load_profile(v)
    except ProfileError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    raise ConfigError(f"{where}: must be a profile name, a YAML path or an inline profile mapping")


def _model_spec(i: int, m: ModelEntry) -> ModelSpec:
    where = f"models[{i}]"
    profile = parse_profile(m.profile, f"{where}.profile")
    names = [t.name for t in m.tiers]
    for j, n in enumerate(names):
        if names.index(n) != j:
            raise ConfigError(f"{where}.tiers[{j}].name: tier {n!r} is listed twice")
    servers = []
    seen_ids: set[str] = set()
    for j, s in enumerate(m.servers):
        sw = f"{where}.servers[{j}]"
        host, port = parse_url(s.url, f"{sw}.url")
        if s.tier not in names:
            raise ConfigError(f"{sw}.tier: {s.tier!r} is not a tier of model {m.name!r} ({', '.join(names)})")
        sid = s.id if s.id is not None else f"{host}:{port}"
        if sid in seen_ids:
            raise ConfigError(f"{sw}.id: server {sid!r} is listed twice")
        seen_ids.add(sid)
        servers.append(ServerSpec(sid, host, port, s.tier))
    max_prompt = m.max_prompt_tokens if m.max_prompt_tokens is not None else min(131072, profile.kv_capacity_tokens)
    return ModelSpec(m.name, profile, [TierSLO.from_api(t) for t in m.tiers], servers, max_prompt)


def parse_config(data: Any) -> RouterConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"config: must be a mapping, got {type(data).__name__}")
    try:
        doc = RouterConfigFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("; ".join(describe(exc))) from None
    models: dict[str, ModelSpec] = {}
    for i, m in enumerate(doc.models):
        if m.name in models:
            raise ConfigError(f"models[{i}].name: model {m.name!r} is listed twice")
        models[m.name] = _model_spec(i, m)
    keys: dict[str, dict[str, frozenset[str]]] = {}
    for i, k in enumerate(doc.api_keys):
        where = f"apiKeys[{i}]"
        if k.key is not None:
            key = k.key
        else:
            key = os.environ.get(str(k.key_env), "")
            if not key:
                raise ConfigError(f"{where}.keyEnv: environment variable {k.key_env!r} is not set")
        for mname in k.models:
            if mname != "*" and mname not in models:
                raise ConfigError(f"{where}.models: {mname!r} is not a configured model")
            grant = keys.setdefault(key, {})
            grant[mname] = grant.get(mname, frozenset()) | frozenset(k.tiers)
    if not keys:
        for spec in models.values():
            spec.public = True
    return RouterConfig(models, keys, doc.routing.kind, doc.routing.scale_up_seconds)


def load_config(path: str) -> RouterConfig:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
