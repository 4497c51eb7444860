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
are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

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


@dataclass
class ModelSpec:
    name: str
    profile: LatencyModel
    tiers: list[TierSLO]
    servers: list[ServerSpec] = field(default_factory=list)
    max_prompt_tokens: int = 131072
    public: bool = False  # no API key needed, every tier open (no keys configured for it)


@dataclass
class RouterConfig:
    models: dict[str, ModelSpec]
    # api key -> {model name or "*": allowed tier names}; empty = no authentication
    keys: dict[str, dict[str, frozenset[str]]] = field(default_factory=dict)
    kind: str = "slo"
    scale_up_s: float = 0.0


def _req(d: dict, key: str, where: str) -> Any:
    if key not in d:
        raise ConfigError(f"{where}.{key}: required field is missing")
    return d[key]


def _mapping(v: Any, where: str) -> dict:
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(v).__name__}")
    return v


def _known_fields(d: dict, allowed: tuple[str, ...], where: str) -> None:
    # Static files only: a typo (`onlate`, `maxPromptToken`) would otherwise fall back to
    # the default without a word. Discovery stays lenient, so the operator can add
    # routing.json fields without breaking older routers.
    unknown = sorted(set(d) - set(allowed), key=str)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown field (allowed: {', '.join(allowed)})")


def _list(v: Any, where: str) -> list:
    if not isinstance(v, list):
        raise ConfigError(f"{where}: must be a list, got {type(v).__name__}")
    return v


def _number(v: Any, where: str, lo: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < lo:
        raise ConfigError(f"{where}: must be a number >= {lo:g}, got {v!r}")
    return float(v)


def _int(v: Any, where: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: must be an integer >= {lo}, got {v!r}")
    return v


TIER_FIELDS = ("name", "ttftMs", "tpotMs", "priority", "meanOutputTokens", "onLate")


def parse_tier(d: Any, where: str) -> TierSLO:
    d = _mapping(d, where)
    name = _req(d, "name", where)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name: must be a non-empty string")
    on_late = d.get("onLate", "reject")
    if on_late not in ("reject", "queue"):
        raise ConfigError(f"{where}.onLate: must be 'reject' or 'queue', got {on_late!r}")
    return TierSLO(
        name=name,
        ttft_ms=_number(_req(d, "ttftMs", where), f"{where}.ttftMs", 1),
        tpot_ms=_number(_req(d, "tpotMs", where), f"{where}.tpotMs", 1),
        priority=_int(d.get("priority", 0), f"{where}.priority", 0),
        mean_output_tokens=_int(d.get("meanOutputTokens", 256), f"{where}.meanOutputTokens", 1),
        on_late=on_late,
    )


def parse_url(url: Any, where: str) -> tuple[str, int]:
    if not isinstance(url, str):
        raise ConfigError(f"{where}: must be a string like http://127.0.0.1:8001")
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} must be http://host:port (TLS to engines is not supported)")
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"{where}: {url!r} has an invalid port") from None
    return parts.hostname, port


def parse_profile(v: Any, where: str) -> LatencyModel:
    try:
        if isinstance(v, dict):
            return LatencyModel.from_dict(v)
        if isinstance(v, str):
            return load_profile(v)
    except ProfileError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    raise ConfigError(f"{where}: must be a profile name, a YAML path or an inline profile mapping")


def parse_config(data: Any) -> RouterConfig:
    data = _mapping(data, "config")
    unknown = set(data) - {"models", "apiKeys", "routing"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown field (allowed: apiKeys, models, routing)")
    routing = _mapping(data.get("routing", {}) or {}, "routing")
    _known_fields(routing, ("kind", "scaleUpSeconds"), "routing")
    kind = routing.get("kind", "slo")
    if kind not in KINDS:
        raise ConfigError(f"routing.kind: {kind!r} is not one of {', '.join(KINDS)}")
    scale_up_s = _number(routing.get("scaleUpSeconds", 0), "routing.scaleUpSeconds", 0)
    models: dict[str, ModelSpec] = {}
    for i, m in enumerate(_list(_req(data, "models", "config"), "models")):
        where = f"models[{i}]"
        m = _mapping(m, where)
        _known_fields(m, ("name", "profile", "maxPromptTokens", "tiers", "servers"), where)
        name = _req(m, "name", where)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name: must be a non-empty string")
        if name in models:
            raise ConfigError(f"{where}.name: model {name!r} is listed twice")
        profile = parse_profile(_req(m, "profile", where), f"{where}.profile")
        tier_docs = _list(_req(m, "tiers", where), f"{where}.tiers")
        for j, t in enumerate(tier_docs):
            if isinstance(t, dict):
                _known_fields(t, TIER_FIELDS, f"{where}.tiers[{j}]")
        tiers = [parse_tier(t, f"{where}.tiers[{j}]") for j, t in enumerate(tier_docs)]
        if not tiers:
            raise ConfigError(f"{where}.tiers: needs at least one tier")
        names = [t.name for t in tiers]
        for j, n in enumerate(names):
            if names.index(n) != j:
                raise ConfigError(f"{where}.tiers[{j}].name: tier {n!r} is listed twice")
        servers = []
        seen_ids: set[str] = set()
        for j, s in enumerate(_list(m.get("servers", []), f"{where}.servers")):
            sw = f"{where}.servers[{j}]"
            s = _mapping(s, sw)
            _known_fields(s, ("url", "tier", "id"), sw)
            host, port = parse_url(_req(s, "url", sw), f"{sw}.url")
            tier = _req(s, "tier", sw)
            if tier not in names:
                raise ConfigError(f"{sw}.tier: {tier!r} is not a tier of model {name!r} ({', '.join(names)})")
            sid = str(s.get("id", f"{host}:{port}"))
            if sid in seen_ids:
                raise ConfigError(f"{sw}.id: server {sid!r} is listed twice")
            seen_ids.add(sid)
            servers.append(ServerSpec(sid, host, port, tier))
        max_prompt = _int(
            m.get("maxPromptTokens", min(131072, profile.kv_capacity_tokens)), f"{where}.maxPromptTokens", 1
        )
        models[name] = ModelSpec(name, profile, tiers, servers, max_prompt)
    keys: dict[str, dict[str, frozenset[str]]] = {}
    for i, k in enumerate(_list(data.get("apiKeys", []) or [], "apiKeys")):
        where = f"apiKeys[{i}]"
        k = _mapping(k, where)
        _known_fields(k, ("key", "keyEnv", "tiers", "models"), where)
        if "key" in k:
            key = k["key"]
        elif "keyEnv" in k:
            key = os.environ.get(str(k["keyEnv"]))
            if not key:
                raise ConfigError(f"{where}.keyEnv: environment variable {k['keyEnv']!r} is not set")
        else:
            raise ConfigError(f"{where}: needs 'key' or 'keyEnv'")
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where}.key: must be a non-empty string")
        tiers = _list(_req(k, "tiers", where), f"{where}.tiers")
        if not tiers or not all(isinstance(t, str) for t in tiers):
            raise ConfigError(f"{where}.tiers: must be a non-empty list of tier names")
        for mname in _list(k.get("models", ["*"]), f"{where}.models"):
            if mname != "*" and mname not in models:
                raise ConfigError(f"{where}.models: {mname!r} is not a configured model")
            grant = keys.setdefault(key, {})
            grant[mname] = grant.get(mname, frozenset()) | frozenset(tiers)
    if not keys:
        for spec in models.values():
            spec.public = True
    return RouterConfig(models, keys, kind, scale_up_s)


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
