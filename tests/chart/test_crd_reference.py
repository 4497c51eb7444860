"""docs/crd-reference.md is generated from the models; it must match a fresh render."""

from __future__ import annotations

import importlib.util

from chart_support import CHART, REPO


def test_crd_reference_is_up_to_date():
    spec = importlib.util.spec_from_file_location("kubetier_crd_reference", CHART / "hack" / "crd_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render()
    assert "`spec.tiers[].tpotMs`" in text and "`spec.budgetWatts`" in text
    assert (REPO / "docs" / "crd-reference.md").read_text() == text, (
        "docs/crd-reference.md drifted from the CRD models: run "
        "`.venv/bin/python charts/kubetier/hack/crd_reference.py --write`"
    )
