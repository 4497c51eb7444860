"""The chart runs the image the project builds (`make image`): registry, repository, tag,
digest and pull secrets, and nothing else by default."""

from __future__ import annotations

import importlib.util
import re

import pytest
import yaml
from chart_support import CHART, REPO, RenderError

_spec = importlib.util.spec_from_file_location("kubetier_image_build", REPO / "image" / "build.py")
assert _spec and _spec.loader
image_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_build)

DIGEST = "sha256:" + "ab" * 32


def containers(objs: list[dict]) -> list[dict]:
    out = []
    for o in objs:
        spec = o.get("spec", {})
        pod = spec.get("template", {}).get("spec", spec)
        out += pod.get("containers", []) + pod.get("initContainers", [])
    return out


def pod_specs(objs: list[dict]) -> list[dict]:
    return [o["spec"]["template"]["spec"] for o in objs if "template" in o.get("spec", {})]


def test_defaults_render_only_the_image_make_image_builds(render):
    objs = render(None)
    images = {c["image"] for c in containers(objs)}
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    version = re.search(r'__version__ = "([^"]+)"', (REPO / "operator/kubetier/__init__.py").read_text())
    assert version and version.group(1) == app_version, "the chart's appVersion is the image's version"
    assert images == {f"{image_build.REPOSITORY}:{app_version}"}, images
    assert len(containers(objs)) >= 2  # operator, router (the node agent is not enabled yet)
    # The operator's default simulator engine image is that same image.
    env = {e["name"]: e.get("value") for c in containers(objs) for e in c.get("env", [])}
    assert env["KUBETIER_SIMULATOR_IMAGE"] == f"{image_build.REPOSITORY}:{app_version}"


def test_registry_repository_tag(render):
    objs = render(None, "image.registry=registry.example.com:5000", "image.repository=team/kubetier", "image.tag=dev")
    assert {c["image"] for c in containers(objs)} == {"registry.example.com:5000/team/kubetier:dev"}


def test_empty_registry_uses_repository_as_written(render):
    objs = render(None, "image.registry=", "image.repository=localhost/kubetier")
    assert {c["image"] for c in containers(objs)} == {"localhost/kubetier:0.1.0"}


def test_digest_takes_precedence_and_pull_secrets_reach_every_pod(render):
    objs = render(None, f"image.digest={DIGEST}", "image.tag=ignored", "imagePullSecrets[0].name=regcred")
    assert {c["image"] for c in containers(objs)} == {f"ghcr.io/kubetier/kubetier@{DIGEST}"}
    specs = pod_specs(objs)
    assert specs and all(s.get("imagePullSecrets") == [{"name": "regcred"}] for s in specs)


@pytest.mark.parametrize(
    ("setting", "key"),
    [("image.digest=sha256:short", "digest"), ("image.registry=Bad_Host", "registry")],
)
def test_bad_image_values_are_refused(render, setting, key):
    with pytest.raises(RenderError, match=key):
        render(None, setting)


def test_values_yaml_default_is_the_built_reference():
    values = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    assert f"{values['registry']}/{values['repository']}" == image_build.REPOSITORY


def test_pushing_docs_use_the_built_layout():
    text = (REPO / "docs" / "image.md").read_text()
    assert "$CRANE push build/image/oci" in text
    assert "image.digest" in text
