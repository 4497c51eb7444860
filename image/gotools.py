#!/usr/bin/env python3
"""Build the Go tools the image and observability checks use, from the Go module proxy.

    gotools.py install [NAME...]   build every missing (or named) tool into $KUBETIER_CACHE/bin
    gotools.py path NAME           print the path of a built tool (exit 1 when missing)
    gotools.py status              versions of the cached tools

Each tool is pinned to one module version (checked against the Go checksum database by
`go install`), built with -trimpath into the same cache as the local cluster's binaries
(``$KUBETIER_CACHE``, default ``~/.cache/kubetier``), outside the repository, so a second
run costs nothing. Standard library only: it runs before the project's venv exists.

Cold build times on a 2-core machine are printed per tool and recorded in docs/image.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("KUBETIER_CACHE") or Path.home() / ".cache" / "kubetier").expanduser()
BIN = CACHE / "bin"


@dataclass(frozen=True)
class GoTool:
    name: str
    package: str
    version: str
    want: str  # substring of the tool's version output proving it is the pinned build
    version_args: tuple[str, ...]
    ldflags: str = "-s -w"

    def path(self) -> Path:
        return BIN / self.name

    def installed(self) -> bool:
        if not self.path().is_file():
            return False
        try:
            res = subprocess.run([str(self.path()), *self.version_args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return self.want in res.stdout + res.stderr


CRANE_VERSION = "v0.22.1"
PROMETHEUS_MODULE_VERSION = "v0.316.0"  # Prometheus 3.16.0 (modules are tagged v0.3xx.y)
PROMETHEUS_VERSION = "3.16.0"
_PROM_STAMP = (
    f"-s -w -X github.com/prometheus/common/version.Version={PROMETHEUS_VERSION}"
    " -X github.com/prometheus/common/version.Branch=module-proxy"
    " -X github.com/prometheus/common/version.Revision=" + PROMETHEUS_MODULE_VERSION
)

TOOLS = {
    t.name: t
    for t in (
        GoTool(
            "crane",
            f"github.com/google/go-containerregistry/cmd/crane@{CRANE_VERSION}",
            CRANE_VERSION,
            CRANE_VERSION,
            ("version",),
            ldflags=f"-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version={CRANE_VERSION}",
        ),
        GoTool(
            "promtool",
            f"github.com/prometheus/prometheus/cmd/promtool@{PROMETHEUS_MODULE_VERSION}",
            PROMETHEUS_MODULE_VERSION,
            f"version {PROMETHEUS_VERSION}",
            ("--version",),
            ldflags=_PROM_STAMP,
        ),
        GoTool(
            "prometheus",
            f"github.com/prometheus/prometheus/cmd/prometheus@{PROMETHEUS_MODULE_VERSION}",
            PROMETHEUS_MODULE_VERSION,
            f"version {PROMETHEUS_VERSION}",
            ("--version",),
            ldflags=_PROM_STAMP,
        ),
    )
}


def log(msg: str) -> None:
    print(f"[gotools] {msg}", flush=True)


def go_env() -> dict[str, str]:
    if not shutil.which("go"):
        sys.exit(
            "gotools: the Go toolchain (>= 1.26) is needed to build crane/promtool/prometheus from the "
            "Go module proxy: install Go from https://go.dev/dl or your package manager"
        )
    env = dict(os.environ)
    env.update(
        GOCACHE=str(CACHE / "go" / "cache"),
        GOMODCACHE=str(CACHE / "go" / "mod"),
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        GOFLAGS="",
        GOBIN=str(BIN),
    )
    return env


def build(tool: GoTool) -> float:
    BIN.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    log(f"go install {tool.package} (cold builds take minutes; progress is the package count)")
    cmd = ["nice", "-n", "10", "go", "install", "-v", "-trimpath", "-ldflags", tool.ldflags, tool.package]
    proc = subprocess.Popen(cmd, env=go_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    last_report = start
    for count, line in enumerate(proc.stdout, 1):
        tail = [*tail[-30:], line.rstrip()]
        if time.monotonic() - last_report > 30:
            last_report = time.monotonic()
            log(f"  {tool.name}: {last_report - start:.0f}s, {count} packages so far")
    if proc.wait() != 0:
        sys.exit(f"gotools: building {tool.name} failed:\n  " + "\n  ".join(tail))
    took = time.monotonic() - start
    if not tool.installed():
        sys.exit(f"gotools: {tool.name} was built but `{tool.name} {' '.join(tool.version_args)}` lacks {tool.want!r}")
    log(f"[phase] {tool.name} {tool.version} built in {took:.0f}s")
    return took


def install(names: list[str]) -> None:
    for name in names or list(TOOLS):
        tool = TOOLS[name]
        if tool.installed():
            log(f"{name}: cached at {tool.path()} ({tool.version})")
            continue
        build(tool)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_install = sub.add_parser("install", help="build missing tools (all, or the named ones)")
    p_install.add_argument("names", nargs="*", metavar="NAME", help=f"one of {', '.join(TOOLS)}")
    p_path = sub.add_parser("path", help="print a built tool's path; exit 1 when it is not built")
    p_path.add_argument("name", choices=list(TOOLS))
    sub.add_parser("status", help="which tools are cached")
    args = parser.parse_args(argv)
    if args.cmd == "install":
        unknown = [n for n in args.names if n not in TOOLS]
        if unknown:
            parser.error(f"unknown tool(s) {', '.join(unknown)}; known: {', '.join(TOOLS)}")
        install(args.names)
    elif args.cmd == "path":
        tool = TOOLS[args.name]
        if not tool.installed():
            print(f"{args.name} is not built: run image/gotools.py install {args.name}", file=sys.stderr)
            return 1
        print(tool.path())
    else:
        for tool in TOOLS.values():
            print(f"{tool.name:<11} {tool.version:<9} {'cached' if tool.installed() else 'missing'}  {tool.path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
