"""Who the operator is to the API server: its field manager and annotation domain
(shared by every controller; pure constants)."""

from __future__ import annotations

FIELD_MANAGER = "kubetier-operator"
DOMAIN = "kubetier.io"
