"""Local-development helpers for the KWOK cluster (pods there run no containers).

`LocalEngines` runs one engine-simulator process on loopback for every Running pod the
operator created, and marks the pod with the ``kubetier.io/local-endpoint`` annotation so
a router started with ``--local-endpoints`` sends that pod's traffic to it.
"""

from kubetier.localdev.engines import (
    LOCAL_ENDPOINT_ANNOTATION,
    MANAGED_SELECTOR,
    EngineArgs,
    LocalEngines,
    engine_args_from_pod,
    engine_sim_command,
    plan,
)

__all__ = [
    "LOCAL_ENDPOINT_ANNOTATION",
    "MANAGED_SELECTOR",
    "EngineArgs",
    "LocalEngines",
    "engine_args_from_pod",
    "engine_sim_command",
    "plan",
]
