"""The API layer's pure helpers: paths, credentials material from kubeconfig data."""

from __future__ import annotations

import base64
import os
import types

from kubetier.kube import RESOURCES, KubeClient
from kubetier.kube.connection import _material, _pem


def test_paths():
    assert RESOURCES["Deployment"].path("ns", "d") == "/apis/apps/v1/namespaces/ns/deployments/d"
    assert (
        RESOURCES["ModelService"].path("ns", "m", "status")
        == "/apis/kubetier.io/v1alpha1/namespaces/ns/modelservices/m/status"
    )
    assert RESOURCES["Node"].path("ignored") == "/api/v1/nodes"


def test_kubeconfig_data_is_base64_of_pem_and_pem_passes_through(tmp_path):
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    assert _pem(base64.b64encode(pem).decode()) == pem
    assert _pem(pem) == pem
    written, temporary = _material(None, base64.b64encode(pem))
    assert temporary
    with open(written, "rb") as f:
        assert f.read() == pem
    os.unlink(written)
    assert _material(tmp_path / "cert.pem", None) == (str(tmp_path / "cert.pem"), False)
    assert _material(None, None) == (None, False)


async def test_token_from_connection_info_is_sent():
    info = types.SimpleNamespace(
        server="http://127.0.0.1:1",
        insecure=None,
        ca_path=None,
        ca_data=None,
        certificate_path=None,
        certificate_data=None,
        private_key_path=None,
        private_key_data=None,
        token="t0k",
        scheme=None,
        username=None,
        password=None,
    )
    api = KubeClient.from_connection(info)
    try:
        assert api._client.headers["Authorization"] == "Bearer t0k"
    finally:
        await api.aclose()
