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


def weights_ref(source: str) -> str:
    """vLLM and SGLang take a Hugging Face repo id or a local path; strip our hf:// scheme."""
    return source.removeprefix("hf://")


def engine_command(spec: ModelServiceSpec) -> list[str]:
    e, port = spec.engine, str(spec.engine.port)
    gpus = str(max(spec.resources.gpus_per_replica, 1))
    if e.kind == "vllm":
        cmd = [
            "vllm",
            "serve",
            weights_ref(spec.model.source),
            "--served-model-name",
            spec.model.name,
            "--host",
            POD_BIND_ADDRESS,
            "--port",
            port,
            "--max-num-seqs",
            str(e.max_num_seqs),
            "--tensor-parallel-size",
            gpus,
            # The latency model assumes chunked prefill (Sarathi-style mixed iterations).
            "--enable-chunked-prefill",
        ]
        if e.max_num_batched_tokens:
            cmd += ["--max-num-batched-tokens", str(e.max_num_batched_tokens)]
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
            str(e.max_num_seqs),
            "--tp-size",
            gpus,
        ]
        if e.max_num_batched_tokens:
            cmd += ["--chunked-prefill-size", str(e.max_num_batched_tokens)]
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
    return cmd + list(e.args)


def engine_image(spec: ModelServiceSpec, config: OperatorConfig) -> str:
    if spec.engine.image:
        return spec.engine.image
    return {"vllm": config.vllm_image, "sglang": config.sglang_image, "simulator": config.simulator_image}[
        spec.engine.kind
    ]


def engine_env(spec: ModelServiceSpec) -> list[dict[str, Any]]:
    return [{"name": v.name, "value": v.value} for v in spec.engine.env]
