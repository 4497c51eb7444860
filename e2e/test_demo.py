"""`make demo` ends in `kubetier demo`: run it here, short, against the suite's cluster,
so the README's first command is tested by the second."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid

from e2e_support import Kubectl, session_operator_paused


def test_demo_serves_every_tier_through_the_router_and_cleans_up(kubeconfig: str, kubectl: Kubectl, crds, tmp_path):
    ns = f"e2e-demo-{uuid.uuid4().hex[:5]}"
    out = tmp_path / "demo.json"
    # The demo runs its own operator (under its own ServiceAccount); the suite's
    # all-namespaces operator must not reconcile the same object meanwhile.
    with session_operator_paused("the demo runs its own operator"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "kubetier.cli",
                "demo",
                "--kubeconfig",
                kubeconfig,
                "--namespace",
                ns,
                "--duration",
                "4",
                "--rate",
                "6",
                "--output",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=420,
        )
    log = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, log
    assert "router answered 403" in proc.stdout, log  # the escalation attempt
    summary = json.loads(out.read_text())["phases"]
    steady = summary["steady mix"]
    assert set(steady) == {"interactive", "standard", "batch"}
    for tier, figures in steady.items():
        assert figures["sent"] > 0, tier
        assert figures["completed"] == figures["sent"], (tier, figures)
    burst = next(v for k, v in summary.items() if k.startswith("batch burst"))
    assert burst["batch"]["completed"] == burst["batch"]["sent"] > 0
    # a preemption notice mid-traffic: nothing failed, no stream lost or repeated a token,
    # the drained pods were replaced on another node
    notice = summary["preemption notice"]["notice"]
    assert notice["node"] and notice["pods"], notice
    assert notice["failed"] == 0 and notice["incomplete"] == 0, notice
    assert len(notice["replacements"]) >= len(notice["pods"]), notice
    # status carried the router's attainment into `kubectl get ms` before cleanup: the
    # service's last row (the demo also prints one before any traffic, with -/-/-; the
    # header is always printed) shows one measured percentage per tier.
    # ATTAINMENT is the column before AGE (SCALE before it holds spaces: "1/1 1/1 1/1").
    rows = re.findall(r"^\S+\s+\S+\s+interactive,standard,batch\s+True\s+.*\s(\S+)\s+\S+$", proc.stdout, re.M)
    assert rows, log
    assert re.fullmatch(r"\d+(\.\d+)?/\d+(\.\d+)?/\d+(\.\d+)?", rows[-1]), (rows, log)
    # the closing line counts what went wrong: nothing was lost
    assert re.search(r"failed or lost: 0$", proc.stdout, re.M), log
    # everything the demo created is gone or going
    assert not kubectl("get", "clusterrole", f"kubetier-demo-operator-{ns}", "--ignore-not-found", "-o", "name")
    phase = kubectl("get", "namespace", ns, "--ignore-not-found", "-o", "jsonpath={.status.phase}")
    assert phase in ("", "Terminating")
