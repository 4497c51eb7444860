"""The engine container of a serving pod, per engine kind (pure).

Each engine gets the same contract from kubetier: serve the OpenAI API on
``spec.engine.port`` under the served model name, answer ``GET /health`` once the model
is loaded, and batch at most ``maxNumSeqs`` sequences. The user's ``engine.args`` come
last so they can override anything rendered here.
"""

from __future__ import annotations

from typing import Any

from kubetier.api.modelservice import ModelServiceSpec
from kubetier.api.routing import PROFILE_KEY
from kubetier.operator.modelservice.model import OperatorConfig

# Where the simulator finds the latency profile (a key of the routing ConfigMap).
PROFILE_MOUNT_DIR = "/etc/kubetier/profile"
PROFILE_FILE = PROFILE_KEY  # the routing ConfigMap key holding the resolved profile
# In-cluster only: an engine container must accept the router's connections on its pod
# IP, and the pod's network namespace is its boundary. Every process kubetier starts on
# a developer's machine (tests, demo, `kubetier engine-sim` defaults, the chart's
# run_local.py which rewrites this address) binds 127.0.0.1 instead.
POD_BIND_ADDRESS = "0.0.0.0"


# The readiness path every engine kind answers once its model is loaded; the startup probe
# polls it every STARTUP_PERIOD_SECONDS for up to spec.engine.startupTimeoutSeconds.
STARTUP_PERIOD_SECONDS = 10


def weights_ref(source: str) -> str:
    """vLLM and SGLang take a Hugging Face repo id or a local path; strip our hf:// scheme."""
    return source.removeprefix("hf://")


def batching_profile(spec: ModelServiceSpec, profile: dict[str, Any]) -> dict[str, Any]:
    """The resolved latency profile with the batching limits the engine will really run.

    The router predicts TTFT/TPOT from ``maxNumSeqs`` and ``maxNumBatchedTokens``; the
    engine batches by its own flags. One source for both: ``spec.engine.maxNumSeqs``, and
    ``spec.engine.maxNumBatchedTokens`` or else the profile's value. The result goes into
    the routing document (the router), the simulator's profile file, and the rendered
    engine flags (``engine_command``), so prediction and engine cannot disagree.
    """
    out = dict(profile)
    out["maxNumSeqs"] = spec.engine.max_num_seqs
    if spec.engine.max_num_batched_tokens:
        out["maxNumBatchedTokens"] = spec.engine.max_num_batched_tokens
    return out


def _batching(spec: ModelServiceSpec, profile: dict[str, Any] | None) -> tuple[int, int | None]:
    if profile is None:
        return spec.engine.max_num_seqs, spec.engine.max_num_batched_tokens
    return int(profile["maxNumSeqs"]), int(profile["maxNumBatchedTokens"])


def engine_command(spec: ModelServiceSpec, profile: dict[str, Any] | None = None) -> list[str]:
    """The engine's command line. ``profile``: the ``batching_profile`` (its batching limits
    are rendered as flags; without it, the spec's own values)."""
    e, port = spec.engine, str(spec.engine.port)
    gpus = str(max(spec.resources.gpus_per_replica, 1))
    max_seqs, batched_tokens = _batching(spec, profile)
    if e.kind == "vllm":
        # `python3 -m ...api_server` rather than the `vllm` console script: the same entry
        # point in vLLM's images and in a pip install of the CPU wheel (whose console script
        # looks for a distribution named `vllm`); the real-vLLM e2e runs exactly this.
        cmd = [
            "python3",
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            weights_ref(spec.model.source),
            "--served-model-name",
            spec.model.name,
            "--host",
            POD_BIND_ADDRESS,
            "--port",
            port,
            "--max-num-seqs",
            str(max_seqs),
            "--tensor-parallel-size",
            gpus,
            "--gpu-memory-utilization",
            f"{e.gpu_memory_utilization:g}",
            # The latency model assumes chunked prefill (Sarathi-style mixed iterations).
            "--enable-chunked-prefill",
        ]
        if batched_tokens:
            cmd += ["--max-num-batched-tokens", str(batched_tokens)]
        if e.max_model_len:
            cmd += ["--max-model-len", str(e.max_model_len)]
    elif e.kind == "sglang":
        cmd = [
            "python3",
            "-m",
            "sglang.launch_server",
            "--model-path",
            weights_ref(spec.model.source),
            "--served-model-name",
            spec.model.name,
            "--host",
            POD_BIND_ADDRESS,
            "--port",
            port,
            "--max-running-requests",
            str(max_seqs),
            "--tp-size",
            gpus,
            "--mem-fraction-static",
            f"{e.gpu_memory_utilization:g}",
            "--enable-metrics",
        ]
        if batched_tokens:
            cmd += ["--chunked-prefill-size", str(batched_tokens)]
        if e.max_model_len:
            cmd += ["--context-length", str(e.max_model_len)]
    else:  # simulator
        cmd = [
            "kubetier",
            "engine-sim",
            "--host",
            POD_BIND_ADDRESS,
            "--port",
            port,
            "--profile",
            f"{PROFILE_MOUNT_DIR}/{PROFILE_FILE}",
            "--model",
            spec.model.name,
        ]
        if e.max_model_len:
            cmd += ["--max-model-len", str(e.max_model_len)]
    return cmd + list(e.args)


def engine_image(spec: ModelServiceSpec, config: OperatorConfig) -> str:
    if spec.engine.image:
        return spec.engine.image
    return {"vllm": config.vllm_image, "sglang": config.sglang_image, "simulator": config.simulator_image}[
        spec.engine.kind
    ]


def _key_ref(ref: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": ref.name, "key": ref.key}
    if ref.optional:
        out["optional"] = True
    return out


def engine_env(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    """spec.engine.env as container env: plain values, Secret and ConfigMap key references
    (a gated model's HF_TOKEN never sits in the ModelService), and the model cache's
    variables (set first, so the user's own entries can override them)."""
    out: list[dict[str, Any]] = []
    cache = spec.model.cache
    if cache is not None and spec.engine.kind != "simulator" and spec.model.source.startswith("hf://"):
        out += [{"name": "HF_HUB_CACHE", "value": cache.mount_path}, {"name": "HF_HUB_OFFLINE", "value": "1"}]
    for v in spec.engine.env:
        if v.value_from is None:
            out.append({"name": v.name, "value": v.value})
        elif v.value_from.secret_key_ref is not None:
            out.append({"name": v.name, "valueFrom": {"secretKeyRef": _key_ref(v.value_from.secret_key_ref)}})
        else:
            assert v.value_from.config_map_key_ref is not None  # the API allows exactly one
            out.append({"name": v.name, "valueFrom": {"configMapKeyRef": _key_ref(v.value_from.config_map_key_ref)}})
    return out


def engine_env_from(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for source in spec.engine.env_from:
        ref, kind = (
            (source.secret_ref, "secretRef")
            if source.secret_ref is not None
            else (source.config_map_ref, "configMapRef")
        )
        assert ref is not None  # the API allows exactly one
        entry: dict[str, Any] = {kind: {"name": ref.name, **({"optional": True} if ref.optional else {})}}
        if source.prefix:
            entry["prefix"] = source.prefix
        out.append(entry)
    return out


def scrape_annotations(spec: ModelServiceSpec) -> dict[str, str]:
    """Every engine kind serves Prometheus metrics on its HTTP port at /metrics (SGLang with
    --enable-metrics, rendered above)."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(spec.engine.port),
        "prometheus.io/path": "/metrics",
    }


MODEL_CACHE_VOLUME = "model-cache"


def model_cache_volume(spec: ModelServiceSpec) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(volume, volumeMount) of the shared weights cache: the claim mounted read-only, so
    replicas share one copy and none can corrupt it; or an OCI image volume (Kubernetes
    ImageVolume), pulled once per node by the kubelet and always read-only."""
    cache = spec.model.cache
    if cache is None:
        return None
    volume: dict[str, Any] = {"name": MODEL_CACHE_VOLUME}
    if cache.image is not None:
        volume["image"] = {"reference": cache.image.reference, "pullPolicy": cache.image.pull_policy}
    else:
        volume["persistentVolumeClaim"] = {"claimName": cache.claim_name, "readOnly": True}
    return volume, {"name": MODEL_CACHE_VOLUME, "mountPath": cache.mount_path, "readOnly": True}


def _image_volumes(obj: dict[str, Any]) -> set[str]:
    pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    return {str(v.get("name")) for v in pod.get("volumes") or () if isinstance(v, dict) and "image" in v}


def image_volume_dropped(wanted: dict[str, Any], stored: dict[str, Any]) -> bool:
    """True when the API server stored ``wanted`` (a Deployment) without one of its image
    volumes: an API server with the ImageVolume feature gate off (beta, off by default in
    Kubernetes 1.33-1.34) drops ``volumes[].image`` and its mounts without an error."""
    return bool(_image_volumes(wanted) - _image_volumes(stored))


IMAGE_VOLUME_UNSUPPORTED = (
    "model.cache.image: the API server dropped the image volume from the engine Deployment (the "
    "ImageVolume feature gate is off: Kubernetes 1.33+ with the gate on the API server and kubelets, "
    "on by default from 1.35); engines would start without their weights: use model.cache.claimName"
)


def startup_failure_threshold(spec: ModelServiceSpec) -> int:
    """Startup-probe failures allowed: the whole of spec.engine.startupTimeoutSeconds."""
    return -(-spec.engine.startup_timeout_seconds // STARTUP_PERIOD_SECONDS)
