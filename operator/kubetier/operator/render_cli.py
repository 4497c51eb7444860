"""``kubetier render FILE``: print the objects the operator would apply for a
ModelService (YAML stream), without a cluster.

The file is admitted as the apiserver would (schema defaults, OpenAPI checks, the CEL
rules' twins); an invalid file exits 1 with every reason, each naming its field.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from kubetier.api import InvalidObject, ModelService, admit
from kubetier.operator.modelservice.desired import desired
from kubetier.operator.modelservice.model import Observed, OperatorConfig
from kubetier.operator.modelservice.profile import Unsatisfiable


class _NoAliases(yaml.SafeDumper):
    """Print shared sub-objects (labels, probes) in full rather than as YAML anchors."""

    def ignore_aliases(self, data):
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # Multi-line values (the routing ConfigMap's JSON documents) as literal blocks, the
    # way `kubectl get -o yaml` users read them, not as one escaped line.
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_NoAliases.add_representer(str, _str_presenter)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kubetier render", description=__doc__.strip().split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument("file", help="ModelService YAML ('-' for stdin)")
    parser.add_argument(
        "--profile-configmap", metavar="FILE", help="ConfigMap YAML to resolve spec.latencyProfile.configMapRef against"
    )
    args = parser.parse_args(argv)
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        docs = [d for d in yaml.safe_load_all(text) if d]
    except (OSError, yaml.YAMLError) as exc:
        print(f"kubetier render: {args.file}: {exc}", file=sys.stderr)
        return 1
    services = [d for d in docs if isinstance(d, dict) and d.get("kind") == "ModelService"]
    if not services:
        print(f"kubetier render: {args.file}: no ModelService in the file", file=sys.stderr)
        return 1
    configmap = None
    if args.profile_configmap:
        configmap = (yaml.safe_load(Path(args.profile_configmap).read_text(encoding="utf-8")) or {}).get("data", {})
    out: list[dict] = []
    for doc in services:
        doc.setdefault("metadata", {}).setdefault("namespace", "default")
        try:
            ms = admit(doc)
            assert isinstance(ms, ModelService)
            out += desired(ms, Observed(profile_configmap=configmap), OperatorConfig.from_env())
        except (InvalidObject, Unsatisfiable) as exc:
            print(f"kubetier render: {args.file}: {exc}", file=sys.stderr)
            return 1
    sys.stdout.write(yaml.dump_all(out, Dumper=_NoAliases, sort_keys=False, width=120))
    return 0
