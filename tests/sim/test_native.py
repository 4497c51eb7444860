"""The optional mypyc-compiled simulator (kubetier.sim.native): it is only ever loaded
from a build of the current sources, never mixed with pure modules, and it gives the same
outcomes bit for bit as the pure-Python simulator (slow test: builds it, ~1 CPU-minute)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kubetier.sim import native

# The switch's refusals are checked in a process that runs pure Python (the normal one);
# in a process already running the compiled simulator `enable` has nothing left to refuse.
pure_process = pytest.mark.skipif(native.active_build() is not None, reason="this process runs the compiled simulator")


def _copy_sources(dest: Path) -> Path:
    root = native.package_root()
    for rel in native.MODULES:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest / rel)
    return dest


def test_digest_follows_every_compiled_source(tmp_path: Path) -> None:
    root = _copy_sources(tmp_path / "kubetier")
    before = native.sources_digest(root)
    assert native.sources_digest(root) == before
    for rel in ("sim/engine.py", "policy/routing_slo.py"):
        path = root / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        assert native.sources_digest(root) != before, rel
        path.write_bytes(original)
    assert native.sources_digest(root) == before


@pure_process
def test_missing_build_is_a_clear_error_when_required(tmp_path: Path) -> None:
    with pytest.raises(native.NativeBuildError, match=r"python -m kubetier\.sim\.native build"):
        native.enable(required=True, directory=tmp_path / "none")
    assert native.enable(required=False, directory=tmp_path / "none") is False
    assert native.active_build() is None


@pure_process
def test_build_of_other_sources_is_never_loaded(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"digest": "0" * 64, "modules": {}}))
    meta_path = list(sys.meta_path)
    with pytest.raises(native.NativeBuildError, match="other sources"):
        native.enable(required=True, directory=tmp_path)
    assert native.enable(required=False, directory=tmp_path) is False
    assert sys.meta_path == meta_path


@pure_process
def test_never_mixed_with_modules_already_imported(tmp_path: Path) -> None:
    # This test process has imported the pure modules: a (fake) build of the current
    # sources must not be installed over them.
    import kubetier.sim.engine  # noqa: F401

    modules = {native.module_name(rel): f"kubetier/{rel[:-3]}.so" for rel in native.MODULES}
    (tmp_path / "manifest.json").write_text(json.dumps({"digest": native.sources_digest(), "modules": modules}))
    meta_path = list(sys.meta_path)
    with pytest.raises(native.NativeBuildError, match="already imported"):
        native.enable(required=True, directory=tmp_path)
    assert native.enable(required=False, directory=tmp_path) is False
    assert sys.meta_path == meta_path


def test_switch_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV, "0")
    assert native.enable_from_env() is False
    monkeypatch.setenv(native.ENV, "fast")
    with pytest.raises(native.NativeBuildError, match="must be 0, 1 or auto"):
        native.enable_from_env()


# Outcomes of a few runs, as one digest: every request's (ttft, tpot, deadline verdict,
# rejection, spill, queueing, server) as full-precision floats, plus the run totals.
_OUTCOMES = textwrap.dedent(
    """
    import hashlib, json, sys
    import kubetier.sim
    from kubetier.sim import bench, native, runner
    from kubetier.sim.engine import SimConfig, Simulator
    from kubetier.policy.routing import TierSLO

    class Sink:
        def __init__(self):
            self.h = hashlib.sha256()
        def record(self, *row):
            self.h.update(repr(row).encode())

    out = {"native": str(native.active_build()), "engine": kubetier.sim.engine.__file__}
    for servers, n, load, kind in ((64, 3000, 0.6, "slo"), (64, 3000, 0.6, "pool-least-loaded"), (16, 2000, 1.5, "slo")):
        sc, model, _, _ = bench.bench_scenario(servers, n, load, "llama-3.1-8b-h100")
        win = runner.build_window(sc, 1.0, None)
        cfg = SimConfig(tiers=[TierSLO.from_api(t) for t in sc.tiers], server_tiers=sc.server_tiers(), model=model,
                        policy_kind=kind, seed=3, rebin_idle=kind == "slo", track_power=True, learn_latency=True)
        sink = Sink()
        sim = Simulator(cfg, sink=sink)
        sim.run(runner.window_arrivals(win))
        totals = (sim.steps, sim.n_done, sim.n_rejected, sim.n_waits, sim.now, sim.gpu_seconds(),
                  [(s.served, s.busy_s, s.energy_j) for s in sim.servers])
        out[f"{servers}-{kind}-{load}"] = sink.h.hexdigest() + hashlib.sha256(repr(totals).encode()).hexdigest()
    print(json.dumps(out))
    """
)


def _outcomes(env: dict[str, str]) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", _OUTCOMES], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="mypyc needs a C compiler")
def test_compiled_simulator_gives_the_same_outcomes(tmp_path: Path) -> None:
    env = {**os.environ, native.DIR_ENV: str(tmp_path)}
    env.pop(native.ENV, None)
    # where the switch looks for the current sources' build with this DIR_ENV
    target = native.build(tmp_path / native.sources_digest()[:24], quiet=True)
    pure = _outcomes(env)
    compiled = _outcomes({**env, native.ENV: "1"})
    assert pure["native"] == "None" and pure["engine"].endswith(".py")
    assert compiled["native"] == str(target) and compiled["engine"].endswith(".so")
    for key in pure:
        if key not in ("native", "engine"):
            assert compiled[key] == pure[key], key
    # an edited source has no build: the switch refuses instead of loading the old one
    stale = _outcomes_error({**env, native.ENV: "1", native.DIR_ENV: str(tmp_path / "elsewhere")})
    assert "no compiled simulator for the current sources" in stale


def _outcomes_error(env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _OUTCOMES], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode != 0
    return proc.stderr
