"""Optional compiled fleet simulator: the engine and the routing policy's hot modules
built with mypyc, used only when asked for and only when built from the current sources.

Why: in pure Python the simulator's time splits between the engine (event loop, server
steps: about half with least-loaded) and the policy's decisions (two thirds of it with
kubetier's policy at 1,000 servers); no rearrangement of either gets it near the speed
goals (sim/README.md, "Simulator speed, round 4"). The same code compiled with mypyc
(which ships with mypy, a development dependency) runs 2.0-2.7x faster per simulated
request with the same results bit for bit (IEEE doubles either way, same operations in
the same order; tests/sim/test_native.py checks the outcomes against the pure run).

Use::

    python -m kubetier.sim.native build         # ~1 CPU-minute; needs a C compiler
    KUBETIER_SIM_NATIVE=1 kubetier simulate bench ...

``KUBETIER_SIM_NATIVE``: unset or ``0`` never (the default); ``1`` require a build of the
current sources (a clear error otherwise); ``auto`` use one if present. The build lives
in ``$KUBETIER_SIM_NATIVE_DIR`` (default ``~/.cache/kubetier/sim-native``; :func:`cache_root`) under a digest
of the compiled sources and of the mypy and Python versions, so an edited source is never
shadowed by an old build: it simply has no build until it is rebuilt. Compiled and pure
modules are never mixed: if any of the modules is already imported as Python, the
compiled set is not installed (``auto``) or it is an error (``1``).

The switch is read when ``kubetier.sim`` is first imported (``kubetier/sim/__init__.py``),
before any of these modules; the live router and operator never load compiled code.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ENV = "KUBETIER_SIM_NATIVE"
DIR_ENV = "KUBETIER_SIM_NATIVE_DIR"

# The modules a simulated request runs through (py-spy profiles: sim/README.md), as
# paths under the kubetier package. Everything they import stays interpreted.
MODULES: tuple[str, ...] = (
    "sim/engine.py",
    "policy/routing.py",
    "policy/routing_slo.py",
    "policy/routing_feasibility.py",
    "policy/routing_index.py",
    "policy/routing_costs.py",
    "policy/routing_baselines.py",
    "policy/routing_rescue.py",
    "policy/traffic.py",
    "policy/latency.py",
    "policy/bins.py",
    "policy/waiting.py",
)

_MANIFEST = "manifest.json"


class NativeBuildError(RuntimeError):
    pass


def package_root() -> Path:
    """The ``kubetier`` package folder these sources live in."""
    return Path(__file__).resolve().parents[1]


def module_name(rel: str) -> str:
    return "kubetier." + rel[: -len(".py")].replace("/", ".")


def _toolchain() -> str:
    try:
        from mypy.version import __version__ as mypy_version
    except ImportError:  # no mypy: nothing can be built, and no build can be checked
        mypy_version = "none"
    return f"{sys.implementation.cache_tag} {sysconfig.get_platform()} mypy {mypy_version}"


def sources_digest(root: Path | None = None) -> str:
    """sha256 over the compiled sources (path and bytes) and the toolchain."""
    root = root or package_root()
    h = hashlib.sha256(_toolchain().encode())
    for rel in MODULES:
        h.update(rel.encode() + b"\0")
        h.update((root / rel).read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def cache_root() -> Path:
    """``$KUBETIER_SIM_NATIVE_DIR``, else ``sim-native`` in ``$KUBETIER_CACHE`` (the Makefile's
    cache of cluster tooling), else in ``~/.cache/kubetier``."""
    env = os.environ.get(DIR_ENV)
    if env:
        return Path(env)
    cache = os.environ.get("KUBETIER_CACHE")
    return (Path(cache) if cache else Path.home() / ".cache" / "kubetier") / "sim-native"


def build_dir(digest: str | None = None) -> Path:
    return cache_root() / (digest or sources_digest())[:24]


def build(out: Path | None = None, quiet: bool = False) -> Path:
    """Compile :data:`MODULES` with mypyc into ``out`` (default: :func:`build_dir`).

    Compiles a copy of the package's sources in a temporary folder, never in place: a
    compiled module next to its source would be imported instead of the source even after
    the source changed."""
    root = package_root()
    digest = sources_digest(root)
    out = out or build_dir(digest)
    with tempfile.TemporaryDirectory(prefix="kubetier-native-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(root, src / "kubetier", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.gz", "*.png"))
        # mypyc type-checks what it compiles; the imported modules are analysed, not judged
        (src / "mypy.ini").write_text("[mypy]\nfollow_imports = silent\nignore_missing_imports = True\n")
        cmd = [sys.executable, "-m", "mypyc", "--config-file", "mypy.ini", *[f"kubetier/{rel}" for rel in MODULES]]
        env = {**os.environ, "MYPYPATH": str(src)}
        proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NativeBuildError(
                f"mypyc failed (exit {proc.returncode}); the pure-Python simulator is unaffected.\n"
                + (proc.stdout[-4000:] + proc.stderr[-4000:])
            )
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        files: dict[str, str] = {}
        for rel in MODULES:
            so = src / "kubetier" / (rel[: -len(".py")] + suffix)
            if not so.is_file():
                raise NativeBuildError(f"mypyc produced no {so.name} for {rel}")
            files[module_name(rel)] = str(Path("kubetier") / so.relative_to(src / "kubetier"))
        shared = [p for p in src.glob(f"*__mypyc{suffix}")]
        if len(shared) != 1:
            raise NativeBuildError(f"expected one shared mypyc library, found {[p.name for p in shared]}")
        files[shared[0].name[: -len(suffix)]] = shared[0].name
        staging = out.with_name(out.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for rel_path in files.values():
            dest = staging / rel_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel_path, dest)
        (staging / _MANIFEST).write_text(
            json.dumps({"digest": digest, "toolchain": _toolchain(), "modules": files}, indent=2) + "\n"
        )
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    if not quiet:
        print(f"built {len(MODULES)} modules with mypyc into {out}", file=sys.stderr)
    return out


class _NativeFinder(importlib.abc.MetaPathFinder):
    """Finds exactly the compiled modules of one build, before the normal path finder."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        f = self.files.get(fullname)
        if f is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(f))
        return importlib.util.spec_from_file_location(fullname, f, loader=loader)


_active: Path | None = None


def active_build() -> Path | None:
    """The build in use in this process (None: pure Python)."""
    return _active


def enable(required: bool, directory: Path | None = None) -> bool:
    """Install the compiled modules of the current sources' build for this process.

    Returns False (``required`` False) or raises :class:`NativeBuildError` (``required``
    True) when there is no such build, or when one of the modules is already imported."""
    global _active
    if _active is not None:
        return True
    out = directory or build_dir()
    manifest_path = out / _MANIFEST
    if not manifest_path.is_file():
        if required:
            raise NativeBuildError(
                f"{ENV}=1 but there is no compiled simulator for the current sources at {out}: run "
                "`python -m kubetier.sim.native build` (or unset the variable for the pure-Python simulator)"
            )
        return False
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("digest") != sources_digest():
        if required:
            raise NativeBuildError(f"the compiled simulator at {out} was built from other sources: rebuild it")
        return False
    loaded = sorted(name for name in manifest["modules"] if name in sys.modules)
    if loaded:
        if required:
            raise NativeBuildError(
                f"{ENV}=1 but {', '.join(loaded)} already imported as Python: set the variable before "
                "anything imports kubetier.policy (compiled and pure modules are never mixed)"
            )
        return False
    files = {name: out / rel for name, rel in manifest["modules"].items()}
    sys.meta_path.insert(0, _NativeFinder(files))
    _active = out
    return True


def enable_from_env() -> bool:
    mode = os.environ.get(ENV, "0").strip().lower()
    if mode in ("", "0", "no", "false", "off"):
        return False
    if mode not in ("1", "yes", "true", "on", "auto"):
        raise NativeBuildError(f"{ENV} must be 0, 1 or auto, not {os.environ[ENV]!r}")
    return enable(required=mode != "auto")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m kubetier.sim.native",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the simulator's hot modules with mypyc")
    b.add_argument("--output", type=Path, default=None, help="build folder (default: the cache, by source digest)")
    sub.add_parser("status", help="where the build of the current sources is, if any")
    args = p.parse_args(argv)
    if args.command == "build":
        try:
            build(args.output)
        except NativeBuildError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    out = build_dir()
    state = "built" if (out / _MANIFEST).is_file() else "not built"
    print(f"{state}: {out} (sources digest {sources_digest()[:24]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
