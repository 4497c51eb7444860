"""The chart's node agent: runs `kubetier agent` with the code's RBAC, unprivileged unless it applies caps."""

from __future__ import annotations

from chart_support import by_kind, one

from kubetier.agent import rbac
from kubetier.agent.main import build_parser


def _daemonset(objs):
    return one(objs, "DaemonSet", "kt-kubetier-node-agent")


def test_node_agent_is_off_by_default(render):
    assert not [d for d in by_kind(render(), "DaemonSet")]


def test_node_agent_runs_kubetier_agent_with_flags_it_accepts_and_the_code_rbac(render):
    objs = render(None, "nodeAgent.enabled=true")
    ds = _daemonset(objs)
    c = ds["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["kubetier", "agent"]
    args = build_parser().parse_args([a.replace("$(NODE_NAME)", "n1") for a in c["args"]])
    assert args.node == "n1" and args.backend == "nvml" and args.dry_run  # applyCaps defaults to false
    assert args.preemption == "none"
    assert not c["securityContext"].get("privileged")
    role = one(objs, "ClusterRole", "kt-kubetier-node-agent")
    assert role["rules"] == rbac.RULES
    # The PowerBudget's placement taint on idle GPU nodes must not keep the agent away.
    tolerations = ds["spec"]["template"]["spec"]["tolerations"]
    assert {"key": "kubetier.io/power-budget", "operator": "Exists", "effect": "NoSchedule"} in tolerations
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations  # values kept


def test_applying_caps_runs_privileged_without_dry_run(render):
    objs = render(None, "nodeAgent.enabled=true", "nodeAgent.applyCaps=true")
    c = _daemonset(objs)["spec"]["template"]["spec"]["containers"][0]
    assert "--dry-run" not in c["args"]
    assert c["securityContext"]["privileged"] is True
