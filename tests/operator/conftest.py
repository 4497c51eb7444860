"""Fixtures for operator tests: the HTTP-level fake API. Builders live in
modelservice_builders.py."""

from __future__ import annotations

import pytest
from fake_kube import FakeKube


@pytest.fixture
def fake_kube():
    with FakeKube() as fake:
        yield fake
