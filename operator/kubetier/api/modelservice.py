"""The ``ModelService`` API (kubetier.io/v1alpha1, namespaced, short name ``ms``).

Field names follow docs/contracts.md. The pydantic models are the single source of
truth: ``kubetier crds`` generates the CRD from them, and every CEL rule below has a
pydantic twin with the same message.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import Field, field_validator, model_validator

from kubetier.api.common import (
    MAX_ACCESS_ENTRIES,
    MAX_NAME_LENGTH,
    MAX_SERVICE_NAME_LENGTH,
    MAX_TIER_NAME_LENGTH,
    MAX_TIERS,
    QUANTITY_PATTERN,
    ApiModel,
    Condition,
    api_config,
    cel,
)
from kubetier.api.labels import GPU_PRODUCT_LABEL
from kubetier.api.profile import LatencyProfile
from kubetier.api.tier import SLOTier

GROUP: Final = "kubetier.io"
VERSION: Final = "v1alpha1"
KIND: Final = "ModelService"
API_VERSION: Final = "kubetier.io/v1alpha1"  # f"{GROUP}/{VERSION}"
PLURAL = "modelservices"
DEFAULT_BUILTIN_PROFILE = "llama-3.1-8b-h100"


# --------------------------------------------------------------------------- model


class ModelImage(ApiModel):
    reference: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[^\s]+$",
        description=(
            "OCI image or artifact holding the weights (e.g. registry.example.com/models/llama-3.1-8b:v1, or "
            "pinned @sha256:...). The kubelet pulls it once per node and mounts its files read-only "
            "(Kubernetes ImageVolume)."
        ),
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="When the kubelet pulls the image (as for container images)."
    )


_ONE_CACHE_SOURCE = cel(
    "(has(self.claimName) ? 1 : 0) + (has(self.image) ? 1 : 0) == 1",
    "model.cache: set exactly one of claimName, image",
)


class ModelCache(ApiModel):
    model_config = api_config(rules=[_ONE_CACHE_SOURCE])

    claim_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description=(
            "PersistentVolumeClaim (ReadOnlyMany or ReadWriteMany) in the ModelService's namespace holding the "
            "weights; every replica mounts it read-only at mountPath. For hf:// sources it is the Hugging Face hub "
            "cache (HF_HUB_CACHE, filled once, e.g. by `huggingface-cli download --cache-dir`) and the engine runs "
            "with HF_HUB_OFFLINE=1; for path sources, point source at a path under mountPath."
        ),
    )
    image: ModelImage | None = Field(
        default=None,
        description=(
            "Instead of claimName: an OCI image volume holding the weights, mounted read-only at mountPath "
            "(the same layout rules as claimName). Needs the ImageVolume feature: Kubernetes 1.33+ with the "
            "ImageVolume feature gate on the API server and kubelet (beta, off by default before 1.35) and a "
            "runtime that supports it (containerd 2.1+, CRI-O 1.31+). An API server with the gate off drops "
            "the volume and its mount silently (docs/engines.md)."
        ),
    )
    mount_path: str = Field(
        default="/models", min_length=2, max_length=256, pattern=r"^/[^:]*$", description="Where replicas mount it."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelCache:
        if (self.claim_name is None) == (self.image is None):
            raise ValueError(_ONE_CACHE_SOURCE["message"])
        return self


class ModelRef(ApiModel):
    name: str = Field(
        min_length=1,
        max_length=256,
        description="Name clients put in the OpenAI `model` field (vLLM --served-model-name).",
    )
    source: str = Field(
        min_length=1,
        max_length=1024,
        description='Where the engine loads weights from: "hf://<org>/<repo>" or a path/URI the engine understands.',
    )
    cache: ModelCache | None = Field(
        default=None,
        description="A volume holding the weights, mounted read-only by every replica instead of each one downloading them.",
    )


# --------------------------------------------------------------------------- engine


class KeyRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, description="Secret or ConfigMap name in the same namespace.")
    key: str = Field(min_length=1, max_length=253, description="Key within it.")
    optional: bool = Field(default=False, description="Start the engine even when the key does not exist.")


_ONE_VALUE_SOURCE = cel(
    "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) == 1",
    "env[].valueFrom: set exactly one of secretKeyRef, configMapKeyRef",
)


class EnvVarSource(ApiModel):
    model_config = api_config(rules=[_ONE_VALUE_SOURCE])

    secret_key_ref: KeyRef | None = Field(default=None, description="A key of a Secret (e.g. HF_TOKEN).")
    config_map_key_ref: KeyRef | None = Field(default=None, description="A key of a ConfigMap.")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        if (self.secret_key_ref is None) == (self.config_map_key_ref is None):
            raise ValueError(_ONE_VALUE_SOURCE["message"])
        return self


_VALUE_OR_VALUE_FROM = cel(
    "!(has(self.valueFrom) && has(self.value) && self.value != '')",
    "env[]: set value or valueFrom, not both",
)


class EnvVar(ApiModel):
    model_config = api_config(rules=[_VALUE_OR_VALUE_FROM])

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    value: str = Field(default="", max_length=32768)
    value_from: EnvVarSource | None = Field(
        default=None,
        description="Read the value from a Secret or ConfigMap key instead (keeps tokens out of the spec).",
    )

    @model_validator(mode="after")
    def _value_or_value_from(self) -> EnvVar:
        if self.value_from is not None and self.value:
            raise ValueError(_VALUE_OR_VALUE_FROM["message"])
        return self


class NamedRef(ApiModel):
    name: str = Field(min_length=1, max_length=253)
    optional: bool = Field(default=False)


_ONE_ENV_FROM_SOURCE = cel(
    "(has(self.secretRef) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) == 1",
    "envFrom[]: set exactly one of secretRef, configMapRef",
)


class EnvFromSource(ApiModel):
    model_config = api_config(rules=[_ONE_ENV_FROM_SOURCE])

    secret_ref: NamedRef | None = Field(default=None, description="Every key of a Secret becomes a variable.")
    config_map_ref: NamedRef | None = Field(default=None, description="Every key of a ConfigMap becomes a variable.")
    prefix: str = Field(default="", max_length=253, pattern=r"^([-._a-zA-Z][-._a-zA-Z0-9]*)?$")

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError(_ONE_ENV_FROM_SOURCE["message"])
        return self


class Engine(ApiModel):
    kind: Literal["vllm", "sglang", "simulator"] = Field(
        default="vllm", description="Serving engine: vllm, sglang, or kubetier's engine simulator."
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Container image; empty picks the operator's default image for the engine kind.",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="Port the engine serves HTTP on.")
    args: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Extra engine arguments, appended after the ones kubetier renders.",
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra environment variables.")
    env_from: list[EnvFromSource] = Field(
        default_factory=list, max_length=16, description="Secrets/ConfigMaps whose keys become environment variables."
    )
    max_num_seqs: int = Field(
        default=256, ge=1, le=4096, description="Most sequences in one batch (vLLM --max-num-seqs)."
    )
    max_num_batched_tokens: int | None = Field(
        default=None,
        ge=1,
        le=1_048_576,
        description=(
            "Chunked-prefill token budget per iteration (vLLM --max-num-batched-tokens); empty = the latency "
            "profile's maxNumBatchedTokens. Always rendered, so the engine batches as the router predicts."
        ),
    )
    max_model_len: int | None = Field(
        default=None, ge=16, le=10_485_760, description="Longest prompt+output in tokens (vLLM --max-model-len)."
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description=(
            "Share of GPU memory for weights and KV cache (vLLM --gpu-memory-utilization); the built-in "
            "profiles' kvCapacityTokens assume 0.9."
        ),
    )
    startup_timeout_seconds: int = Field(
        default=1800,
        ge=30,
        le=21600,
        description="How long loading the weights may take before the startup probe gives up and the pod restarts.",
    )


# --------------------------------------------------------------------------- resources


class Resources(ApiModel):
    gpus_per_replica: int = Field(
        default=1,
        ge=0,
        le=16,
        description="nvidia.com/gpu per replica (vLLM tensor-parallel size). 0 only makes sense for the simulator.",
    )
    gpu_product: str | None = Field(
        default=None,
        max_length=128,
        description=f"Required value of the node label {GPU_PRODUCT_LABEL}, e.g. NVIDIA-H100-80GB-HBM3.",
    )
    cpu: str = Field(default="8", max_length=32, pattern=QUANTITY_PATTERN, description="CPU request per replica.")
    memory: str = Field(
        default="64Gi", max_length=32, pattern=QUANTITY_PATTERN, description="Memory request and limit per replica."
    )


# --------------------------------------------------------------------------- latency profile


class ConfigMapKeyRef(ApiModel):
    name: str = Field(min_length=1, max_length=253, description="ConfigMap in the ModelService's namespace.")
    key: str = Field(default="profile.yaml", min_length=1, max_length=253, description="Key holding the profile YAML.")


_ONE_PROFILE_SOURCE = cel(
    "(has(self.builtin) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) + (has(self.inline) ? 1 : 0) == 1",
    "latencyProfile: set exactly one of builtin, configMapRef, inline",
)


class LatencyProfileSpec(ApiModel):
    model_config = api_config(rules=[_ONE_PROFILE_SOURCE])

    builtin: str | None = Field(
        default=None,
        max_length=MAX_NAME_LENGTH,
        pattern=r"^[a-z0-9][-a-z0-9.]*$",
        description="Name of a profile shipped with kubetier (`kubetier profiles list`).",
    )
    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None, description="A ConfigMap key holding the profile YAML."
    )
    inline: LatencyProfile | None = Field(
        default=None,
        description=(
            "The profile itself. Rules across fields (increasing grids, matching lengths) are checked by "
            "the operator, which reports Degraded with the field named."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> LatencyProfileSpec:
        if sum(x is not None for x in (self.builtin, self.config_map_ref, self.inline)) != 1:
            raise ValueError(_ONE_PROFILE_SOURCE["message"])
        return self


# --------------------------------------------------------------------------- tiers


_REPLICAS_ORDER = cel("self.min <= self.max", "replicas.min must be less than or equal to replicas.max")


class Replicas(ApiModel):
    model_config = api_config(rules=[_REPLICAS_ORDER])

    min: int = Field(
        default=1,
        ge=0,
        le=1000,
        description=(
            "Fewest serving replicas the autoscaler keeps (0 only with prewarm.scaleToZero; the tier "
            "then starts at zero and gets a server when a request arrives)."
        ),
    )
    max: int = Field(
        default=4,
        ge=1,
        le=1000,
        description=(
            "Most serving replicas the autoscaler may run (it scales each tier between replicas.min "
            "and this from the routers' demand; status.tiers[].desiredReplicas shows its choice)."
        ),
    )

    @model_validator(mode="after")
    def _order(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(_REPLICAS_ORDER["message"])
        return self


class Capacity(ApiModel):
    spot: Literal["never", "allowed", "preferred"] = Field(
        default="never",
        description="Spot capacity: never (on-demand only), allowed (either), preferred (spot first).",
    )
    on_demand_floor: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Replicas kept on on-demand capacity whatever the spot policy.",
    )
    over_provision: int = Field(
        default=0,
        ge=0,
        le=100,
        description=(
            "Extra serving replicas on spot capacity beyond what the tier needs (a Deployment <name>-<tier>-spare, "
            "spot required), so that a preemption leaves the tier with enough servers while the replacement "
            "starts (SkyServe's over-provisioning). Requires spot: allowed or preferred."
        ),
    )
    zone_spread: Literal["off", "preferred", "required"] = Field(
        default="preferred",
        description=(
            "Spread a tier's serving pods over zones (topologySpreadConstraints on the zone label of the "
            "operator's capacity preset, topology.kubernetes.io/zone unless configured): preferred "
            "(ScheduleAnyway: the scheduler scores for spread but never leaves a pod Pending for it), required "
            "(DoNotSchedule: a pod waits rather than skew more than zoneMaxSkew; spot preemptions often hit one "
            "zone at a time), or off."
        ),
    )
    zone_max_skew: int = Field(
        default=1,
        ge=1,
        le=100,
        description="Most serving pods one zone may have beyond the least-used zone (topologySpreadConstraints maxSkew).",
    )
    fallback_after_seconds: int | None = Field(
        default=None,
        ge=10,
        le=86400,
        description=(
            "With spot: preferred, the operator places the tier's main pool on spot only and itself starts "
            "on-demand fallback replicas (a Deployment <name>-<tier>-fallback) for spot replicas that stay "
            "Pending (unscheduled: no spot capacity) longer than this, with a SpotFallback Event; once the spot "
            "replicas have been Ready for the return period the fallback goes back to zero (ReturnToSpot Event). "
            "Unset: the scheduler's spot preference alone decides (a spot-eligible pod lands on on-demand at once "
            "when spot is short)."
        ),
    )


class Prewarm(ApiModel):
    standby: int = Field(
        default=0,
        ge=0,
        le=100,
        description=(
            "Warm replicas with the model loaded but not routed to (a Deployment <name>-<tier>-standby), "
            "their engines put to sleep once loaded (vLLM sleep mode). When the tier scales out (or from "
            "zero) a standby is woken and moved into serving without a restart, and the Deployment starts "
            "a replacement (docs/autoscaling.md)."
        ),
    )
    scale_to_zero: bool = Field(
        default=False,
        description=(
            "Allow zero serving replicas when idle (with replicas.min: 0): the autoscaler removes the "
            "last server after keepAliveSeconds without requests (or the pre-warm policy's choice), and "
            "starts one as soon as a router holds a request for the tier; the router holds it meanwhile "
            "(onLate: queue waits; reject answers 429 once the TTFT can no longer be met)."
        ),
    )
    keep_alive_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description=(
            "Idle time before a scale-to-zero tier loses its last server; once the tier's idle-time "
            "histogram is representative the pre-warm policy (hybrid histogram) chooses instead."
        ),
    )


_FLOOR_WITHIN_MAX = cel(
    "self.capacity.onDemandFloor <= self.replicas.max",
    "capacity.onDemandFloor must be less than or equal to replicas.max",
)
_SPARE_NEEDS_SPOT = cel(
    "self.capacity.spot != 'never' || self.capacity.overProvision == 0",
    "capacity.overProvision requires capacity.spot: allowed or preferred (over-provisioning is on spot)",
)
_FALLBACK_NEEDS_PREFERRED = cel(
    "!has(self.capacity.fallbackAfterSeconds) || self.capacity.spot == 'preferred'",
    "capacity.fallbackAfterSeconds requires capacity.spot: preferred",
)
_ZERO_NEEDS_SCALE_TO_ZERO = cel(
    "self.replicas.min > 0 || self.prewarm.scaleToZero",
    "replicas.min: 0 requires prewarm.scaleToZero: true",
)


class Tier(SLOTier):
    """An SLO tier and the replicas, capacity and pre-warm settings that serve it."""

    # The SLO fields come from kubetier.api.tier.SLOTier, the shape every part shares.
    model_config = api_config(
        rules=[_FLOOR_WITHIN_MAX, _ZERO_NEEDS_SCALE_TO_ZERO, _SPARE_NEEDS_SPOT, _FALLBACK_NEEDS_PREFERRED]
    )

    replicas: Replicas = Field(default_factory=Replicas)
    capacity: Capacity = Field(default_factory=Capacity)
    prewarm: Prewarm = Field(default_factory=Prewarm)

    @model_validator(mode="after")
    def _cross_field(self) -> Tier:
        if self.capacity.on_demand_floor > self.replicas.max:
            raise ValueError(_FLOOR_WITHIN_MAX["message"])
        if self.replicas.min == 0 and not self.prewarm.scale_to_zero:
            raise ValueError(_ZERO_NEEDS_SCALE_TO_ZERO["message"])
        if self.capacity.spot == "never" and self.capacity.over_provision > 0:
            raise ValueError(_SPARE_NEEDS_SPOT["message"])
        if self.capacity.fallback_after_seconds is not None and self.capacity.spot != "preferred":
            raise ValueError(_FALLBACK_NEEDS_PREFERRED["message"])
        return self


# --------------------------------------------------------------------------- shared pool


_POOL_REPLICAS_ORDER = cel(
    "self.min <= self.max", "sharedPool.replicas.min must be less than or equal to sharedPool.replicas.max"
)


class PoolReplicas(ApiModel):
    model_config = api_config(rules=[_POOL_REPLICAS_ORDER])

    min: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Fewest servers the pool runs; at least the sum of the tiers' replicas.min.",
    )
    max: int = Field(
        default=4,
        ge=1,
        le=1000,
        description=(
            "Most servers the pool runs. The pool runs the sum of the tiers' serving replicas (replicas.min, "
            "or the autoscaler's choice per tier) clamped to [min, max]."
        ),
    )

    @model_validator(mode="after")
    def _order(self) -> PoolReplicas:
        if self.min > self.max:
            raise ValueError(_POOL_REPLICAS_ORDER["message"])
        return self


class SharedPool(ApiModel):
    """One workload whose servers every tier shares; the router puts each server in one
    tier's bin and moves idle servers to the bin that needs them (docs/shared-pool.md)."""

    # Required: sharedPool's presence is the choice, so it must never be defaulted in.
    replicas: PoolReplicas = Field(description="How many servers the pool runs.")


# --------------------------------------------------------------------------- access


class SecretRef(ApiModel):
    name: str = Field(
        min_length=1, max_length=253, description="Secret in the ModelService's namespace; key `api-key`."
    )


class AccessRule(ApiModel):
    secret_ref: SecretRef
    tiers: list[str] = Field(
        min_length=1,
        max_length=MAX_TIERS,
        description="Tiers a request bearing this key may use.",
        json_schema_extra={"items": {"type": "string", "maxLength": MAX_TIER_NAME_LENGTH}},
    )


# --------------------------------------------------------------------------- spec


_UNIQUE_TIER_NAMES = cel(
    "self.tiers.all(t, self.tiers.exists_one(u, u.name == t.name))",
    "tiers[].name must be unique",
)
_DISTINCT_TPOT = cel(
    "self.tiers.all(t, self.tiers.exists_one(u, u.tpotMs == t.tpotMs))",
    "tiers[].tpotMs must differ between tiers (tiers are bins by per-token latency)",
)
_POOL_HOLDS_MINIMUMS = cel(
    "!has(self.sharedPool) || self.tiers.map(t, t.replicas.min).sum() <= self.sharedPool.replicas.min",
    "sharedPool.replicas.min must be at least the sum of tiers[].replicas.min (each tier's bin keeps its minimum)",
)
_POOL_PER_TIER_ONLY = cel(
    "!has(self.sharedPool) || self.tiers.all(t, t.prewarm.standby == 0 && t.capacity.spot == 'never')",
    "with sharedPool, tiers[].prewarm.standby must be 0 and tiers[].capacity.spot must be never "
    "(standby and spot placement are per-tier workloads)",
)
_ACCESS_NAMES_TIERS = cel(
    "!has(self.access) || self.access.all(a, a.tiers.all(n, self.tiers.exists(t, t.name == n)))",
    "access[].tiers must name tiers listed in spec.tiers",
)


class ModelServiceSpec(ApiModel):
    model_config = api_config(
        rules=[_UNIQUE_TIER_NAMES, _DISTINCT_TPOT, _ACCESS_NAMES_TIERS, _POOL_HOLDS_MINIMUMS, _POOL_PER_TIER_ONLY]
    )

    model: ModelRef
    engine: Engine = Field(default_factory=Engine)
    resources: Resources = Field(default_factory=Resources)
    latency_profile: LatencyProfileSpec = Field(
        default_factory=lambda: LatencyProfileSpec(builtin=DEFAULT_BUILTIN_PROFILE),
        json_schema_extra={"default": {"builtin": DEFAULT_BUILTIN_PROFILE}},
        description="Latency profile the router predicts with (and the coming autoscaler will).",
    )
    tiers: list[Tier] = Field(min_length=1, max_length=MAX_TIERS, description="SLO tiers, each with its own servers.")
    access: list[AccessRule] = Field(
        default_factory=list,
        max_length=MAX_ACCESS_ENTRIES,
        description="Which API-key Secrets may use which tiers.",
    )
    shared_pool: SharedPool | None = Field(
        default=None,
        description=(
            "Serve every tier from one shared pool of servers (Deployment <name>-pool) instead of one workload "
            "per tier: the router keeps each pool server in one tier's bin and moves idle servers to the bin "
            "whose requests find no feasible server; tiers[].replicas.min/max then bound each bin's servers."
        ),
    )

    @model_validator(mode="after")
    def _cross_field(self) -> ModelServiceSpec:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(_UNIQUE_TIER_NAMES["message"])
        tpots = [t.tpot_ms for t in self.tiers]
        if len(set(tpots)) != len(tpots):
            raise ValueError(_DISTINCT_TPOT["message"])
        for rule in self.access:
            if any(n not in names for n in rule.tiers):
                raise ValueError(_ACCESS_NAMES_TIERS["message"])
        if self.shared_pool is not None:
            if sum(t.replicas.min for t in self.tiers) > self.shared_pool.replicas.min:
                raise ValueError(_POOL_HOLDS_MINIMUMS["message"])
            if any(t.prewarm.standby or t.capacity.spot != "never" for t in self.tiers):
                raise ValueError(_POOL_PER_TIER_ONLY["message"])
        return self

    def tier(self, name: str) -> Tier:
        return next(t for t in self.tiers if t.name == name)


# --------------------------------------------------------------------------- status


class TierStatus(ApiModel):
    name: str = Field(max_length=MAX_TIER_NAME_LENGTH)
    replicas: int = Field(default=0, ge=0, description="Serving pods that exist.")
    ready_replicas: int = Field(default=0, ge=0, description="Serving pods passing readiness.")
    desired_replicas: int | None = Field(
        default=None,
        ge=0,
        description="Serving replicas the autoscaler wants now (replicas.min until it has decided).",
    )
    last_scale_reason: str | None = Field(
        default=None,
        max_length=1024,
        description="Why the autoscaler last set desiredReplicas (the rule and its figures).",
    )
    standby_replicas: int = Field(
        default=0,
        ge=0,
        description="Ready standby pods (warm, not routed to; promoted to serving on scale-out).",
    )
    spot_replicas: int = Field(default=0, ge=0, description="Serving pods on spot capacity.")
    on_demand_replicas: int = Field(
        default=0, ge=0, description="Serving pods on on-demand capacity (floor, fallback and scheduler fallback)."
    )
    fallback_replicas: int = Field(
        default=0,
        ge=0,
        description="On-demand fallback replicas the operator runs because spot replicas stayed Pending "
        "(capacity.fallbackAfterSeconds).",
    )
    migrations: int = Field(
        default=0,
        ge=0,
        description="Streams the routers moved to another server mid-stream (token-level resumption after a "
        "preemption notice or a broken stream), summed over router replicas since they started.",
    )
    attainment_percent: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description=(
            "Observed share of requests meeting the SLO, from the router's counts; requests refused "
            "with 429 or failed count as misses. Unset until the router has judged 5 requests of the tier."
        ),
    )


class ModelServiceStatus(ApiModel):
    observed_generation: int = Field(default=0, ge=0)
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    tiers: list[TierStatus] = Field(default_factory=list, max_length=MAX_TIERS)
    endpoint: str | None = Field(default=None, max_length=1024, description="OpenAI-compatible base URL clients call.")
    # One-line summaries for `kubectl get ms` (a printer column's JSONPath shows only the
    # first element of a list, so per-tier figures are joined here).
    tier_summary: str | None = Field(default=None, max_length=256, description="Tier names in spec order.")
    replica_summary: str | None = Field(
        default=None, max_length=64, description="Ready serving replicas / desired, over all tiers (e.g. 5/6)."
    )
    scale_summary: str | None = Field(
        default=None,
        max_length=256,
        description="Desired/current serving replicas per tier in spec order (e.g. 2/2 0/0).",
    )
    attainment_summary: str | None = Field(
        default=None,
        max_length=256,
        description="Observed SLO attainment per tier in spec order, in percent ('-' until the router reports).",
    )


# --------------------------------------------------------------------------- object

_NAME_FITS_CHILDREN = cel(
    f"self.metadata.name.size() <= {MAX_SERVICE_NAME_LENGTH}",
    f"metadata.name must be at most {MAX_SERVICE_NAME_LENGTH} characters "
    "(child Services are named <name>-<tier>, limited to 63)",
)


class ModelService(ApiModel):
    """A whole object, as ``kubectl get ms -o yaml`` shows it (metadata kept as a dict)."""

    model_config = api_config(extra="ignore")

    api_version: Literal["kubetier.io/v1alpha1"] = Field(default="kubetier.io/v1alpha1", alias="apiVersion")
    kind: Literal["ModelService"] = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ModelServiceSpec
    status: ModelServiceStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _name_fits(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        name = metadata.get("name", "")
        if len(name) > MAX_SERVICE_NAME_LENGTH:
            raise ValueError(_NAME_FITS_CHILDREN["message"])
        return metadata

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", "default"))


ROOT_VALIDATIONS = [_NAME_FITS_CHILDREN]
