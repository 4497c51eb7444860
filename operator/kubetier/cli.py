"""The one `kubetier` command.

Each subcommand lives in the module that owns it and exposes ``main(argv) -> int``;
this file only dispatches, importing lazily so `kubetier crds` does not pay for
uvloop or kopf, and so one subsystem's import error cannot break the others.

Development-only tools (the benchmarks) are dispatched here too, by their own module,
so the runtime modules (`kubetier operator`, `kubetier router`) never import them: an
import contract in pyproject.toml holds the operator and router to that.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "operator": ("kubetier.operator.main", "run the ModelService operator (kopf)"),
    "router": ("kubetier.router.main", "run the SLO-tier router (OpenAI-compatible front)"),
    "agent": ("kubetier.agent.main", "run the per-node power agent (GPU power telemetry and caps)"),
    "engine-sim": ("kubetier.engine_sim.main", "run the engine simulator (vLLM stand-in)"),
    "simulate": ("kubetier.sim.main", "run the fleet simulator on a scenario"),
    "crds": ("kubetier.api.crdgen", "print or write the generated CRD YAML"),
    "render": ("kubetier.operator.render_cli", "render a ModelService into the objects the operator would apply"),
    "profiles": ("kubetier.policy.latency_cli", "list and inspect latency profiles"),
    "observability": ("kubetier.observability.main", "print/write the Prometheus alert rules and Grafana dashboard"),
    "demo": ("kubetier.demo", "the end-to-end demo (local cluster + operator + router + engines + traffic)"),
}


# (subcommand, first argument) -> development-only module with ``main(argv) -> int``.
DEV_TOOLS: dict[tuple[str, str], str] = {
    ("router", "bench"): "kubetier.router.bench",
    ("simulate", "bench"): "kubetier.sim.bench",
    ("engine-sim", "bench"): "kubetier.engine_sim.fidelity",
    ("engine-sim", "capacity"): "kubetier.engine_sim.capacity",
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: kubetier <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run `kubetier <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from kubetier import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"kubetier: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if rest and (name, rest[0]) in DEV_TOOLS:
        name, rest = DEV_TOOLS[(name, rest[0])], rest[1:]
        return int(importlib.import_module(name).main(rest) or 0)
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
