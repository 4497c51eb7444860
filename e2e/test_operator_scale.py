"""The operator at a (small) scale on the real apiserver: 20 ModelServices reach their
children, and once settled the operator makes no write at all (and, reading from its
watch cache, no request). The same code with --services 100/1000 is the benchmark:
`python e2e/bench_reconcile.py --help`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench_reconcile import delete_namespace, print_report, run
from e2e_support import session_operator_paused


def test_twenty_services_settle_and_steady_state_makes_no_writes(kubectl, crds, gpu_nodes, workdir):
    namespace = "e2e-scale-" + workdir.name[-6:].lower().replace("_", "-")
    with session_operator_paused("the scale test runs its own operator for its namespace"):
        try:
            result = asyncio.run(run(20, tiers=1, window_s=15, updates=5, namespace=namespace, workdir=workdir))
        finally:
            delete_namespace(namespace)
    print_report(result)
    assert result["operator_alive"], Path(result["operator_log"]).read_text()[-4000:]
    assert result["create"]["n"] == 20 and result["update"]["n"] == 5
    steady = result["steady"]
    assert steady["operator_writes"] == 0, steady["operator_requests_per_min"]
    # Reading from the watch cache: not a single list or get in the window either.
    assert steady["operator_requests_per_min_total"] == 0, steady["operator_requests_per_min"]
    assert steady["apiserver_writes_to_operator_resources"] == 0, steady["apiserver_requests_per_min"]
