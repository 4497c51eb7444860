"""The built image, run as a container runtime would: unpacked layer by layer, read-only
root, its own non-root user, nothing from the host but the kernel, /dev and loopback.

Run by `make image-test` (part of `make test`) after `make image`. Needs root (a mount
namespace and chroot); outside CI a missing image or missing root skips with the command
that fixes it, in CI both fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kubetier_image_build", REPO / "image" / "build.py")
assert _spec and _spec.loader
image_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_build)

IMAGE_DIR = Path(os.environ.get("KUBETIER_IMAGE_DIR", REPO / "build" / "image"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(ok: bool, why: str) -> None:
    if not ok:
        if IN_CI:
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture(scope="module")
def info() -> dict:
    path = IMAGE_DIR / "image.json"
    _need(path.is_file(), f"no image at {IMAGE_DIR}: run `make image` first")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def rootfs(info: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The layers applied in manifest order, the way a runtime unpacks them."""
    _need(os.geteuid() == 0, "the image test needs root (mount namespace + chroot)")
    _need(shutil.which("unshare") is not None, "the image test needs util-linux unshare")
    oci = IMAGE_DIR / "oci"
    index = json.loads((oci / "index.json").read_text())
    manifest = json.loads(_blob(oci, index["manifests"][0]["digest"]))
    root = tmp_path_factory.mktemp("rootfs")
    root.chmod(0o755)  # a runtime's root is traversable by every user (mktemp makes 0700)
    for layer in manifest["layers"]:
        path = oci / "blobs" / "sha256" / layer["digest"].split(":")[1]
        with tarfile.open(path, "r:gz") as tar:
            tar.extractall(root, filter="fully_trusted")
    return root


def _blob(oci: Path, digest: str) -> bytes:
    data = (oci / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest.split(":")[1], f"blob {digest} does not match its digest"
    return data


class Jail:
    """Run commands in the unpacked root: own mount namespace, root bind-mounted read-only,
    fresh /proc, host /dev, a tmpfs /tmp (the chart mounts an emptyDir there), chroot as
    65532:65532. The network namespace is the host's, so servers inside bind loopback."""

    def __init__(self, root: Path, config: dict) -> None:
        self.root = root
        self.config = config
        self.env = dict(e.split("=", 1) for e in config["Env"])

    def argv(self, *cmd: str) -> list[str]:
        r = str(self.root)
        # Host tools by absolute path: the environment is the image's (its PATH).
        mount, chroot = shutil.which("mount"), shutil.which("chroot")
        setup = (
            f"{mount} --bind {r} {r} && {mount} -o remount,bind,ro {r} && "
            f"{mount} -t proc proc {r}/proc && {mount} --rbind /dev {r}/dev && "
            f"{mount} -t tmpfs -o mode=1777 tmpfs {r}/tmp && "
            f'exec {chroot} --userspec={self.config["User"]} {r} "$@"'
        )
        unshare = shutil.which("unshare")
        assert unshare and mount and chroot
        return [unshare, "--mount", "--propagation", "private", "--fork", "/bin/sh", "-c", setup, "jail", *cmd]

    def run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*cmd), env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self, *cmd: str) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv(*cmd), env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )


@pytest.fixture(scope="module")
def jail(rootfs: Path, info: dict) -> Jail:
    return Jail(rootfs, info["config"])


def test_digest_is_the_manifest_digest_and_blobs_match(info: dict) -> None:
    oci = IMAGE_DIR / "oci"
    index = json.loads((oci / "index.json").read_text())
    assert index["manifests"][0]["digest"] == info["digest"]
    manifest = json.loads(_blob(oci, info["digest"]))
    config = json.loads(_blob(oci, manifest["config"]["digest"]))
    assert [layer["digest"] for layer in manifest["layers"]] == [layer["digest"] for layer in info["layers"]]
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"]):
        import gzip

        raw = gzip.decompress(_blob(oci, layer["digest"]))
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Entrypoint"] == ["/usr/local/bin/kubetier"]


def test_crane_reads_the_tarball(info: dict) -> None:
    """An independent OCI implementation (go-containerregistry) validates every layer."""
    res = subprocess.run(
        [sys.executable, str(REPO / "image/gotools.py"), "path", "crane"], capture_output=True, text=True
    )
    _need(res.returncode == 0, "crane is not built: run `python3 image/gotools.py install crane`")
    crane = res.stdout.strip()
    archive = IMAGE_DIR / "kubetier-image.tar"
    out = subprocess.run([crane, "validate", "--tarball", str(archive)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "PASS" in out.stdout + out.stderr
    cfg = subprocess.run([crane, "config", "--help"], capture_output=True, text=True)
    assert cfg.returncode == 0


def test_runs_as_non_root_on_a_read_only_root(jail: Jail) -> None:
    probe = (
        "import os, errno\n"
        "print(os.getuid(), os.getgid())\n"
        "for path in ('/probe', '/usr/local/lib/python3.11/dist-packages/probe', os.environ['HOME'] + '/probe'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "        print('writable', path)\n"
        "    except OSError as exc:\n"
        "        print(errno.errorcode[exc.errno], path)\n"
        "open('/tmp/ok', 'w').write('x')\n"
        "print('tmp ok')\n"
    )
    res = jail.run("/usr/bin/python3.11", "-c", probe)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "65532 65532"
    assert lines[1].startswith(("EROFS", "EACCES")), lines
    assert lines[2].startswith(("EROFS", "EACCES")), lines
    assert lines[3].startswith("EROFS"), lines  # home is the user's, but the root is read-only
    assert lines[4] == "tmp ok"


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        ((), "usage: kubetier <command>"),
        (("operator", "--help"), "operator"),
        (("router", "--help"), "usage: kubetier router"),
        (("engine-sim", "--help"), "usage: kubetier engine-sim"),
        (("crds",), "CustomResourceDefinition"),
    ],
)
def test_entrypoint_commands(jail: Jail, info: dict, args: tuple[str, ...], expect: str) -> None:
    res = jail.run(*info["config"]["Entrypoint"], *(args or info["config"]["Cmd"]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert expect in res.stdout
    # Nothing was byte-compiled at run time: every import came from the image's .pyc files.
    assert "Permission denied" not in res.stderr and "Read-only" not in res.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, procs: list[subprocess.Popen], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"process exited {p.returncode}: {p.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready in {timeout}s")


@contextlib.contextmanager
def _running(procs: list[subprocess.Popen]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)


def test_request_through_router_to_engine_simulator_inside_the_image(jail: Jail, tmp_path: Path) -> None:
    """Both servers run from the image's root as 65532 with a read-only root; the client is
    on the host, on loopback."""
    engine_port, router_port = _free_port(), _free_port()
    config = tmp_path / "router.yaml"
    config.write_text(
        "models:\n"
        "  - name: tiny\n"
        "    profile: llama-3.1-8b-h100\n"
        "    tiers:\n"
        "      - {name: interactive, ttftMs: 2000, tpotMs: 200, priority: 100, meanOutputTokens: 8}\n"
        "    servers:\n"
        f"      - {{url: 'http://127.0.0.1:{engine_port}', tier: interactive}}\n"
    )
    # The router reads its config from inside the root: /tmp is the jail's own tmpfs, so
    # hand the file over on stdin-free terms: a copy in the rootfs is impossible (read-only),
    # so the router gets the YAML through /dev/fd of an inherited descriptor.
    engine = jail.start(
        "/usr/local/bin/kubetier", "engine-sim", "--port", str(engine_port), "--model", "tiny", "--time-scale", "20"
    )
    fd = os.open(config, os.O_RDONLY)
    try:
        router = subprocess.Popen(
            jail.argv("/usr/local/bin/kubetier", "router", "--port", str(router_port), "--config", f"/dev/fd/{fd}"),
            env=jail.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            pass_fds=(fd,),
        )
    finally:
        os.close(fd)
    with _running([engine, router]):
        _wait(f"http://127.0.0.1:{engine_port}/health", [engine])
        _wait(f"http://127.0.0.1:{router_port}/health", [router])
        r = httpx.post(
            f"http://127.0.0.1:{router_port}/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8},
            headers={"x-kubetier-tier": "interactive"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] == 8
        metrics = httpx.get(f"http://127.0.0.1:{engine_port}/metrics", timeout=5).text
        served = re.search(r"^vllm:request_success_total\{[^}]*\} (\S+)", metrics, re.M)
        assert served and float(served.group(1)) >= 1, "the engine inside the image did not serve the request"


def test_dockerfile_matches_the_image(info: dict) -> None:
    """The Dockerfile builds the same root with the same script and locks, and declares the
    same user, entrypoint, command, environment and working directory."""
    text = (REPO / "image" / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    assert len(stages) == 2, "a build stage and a FROM scratch stage"
    assert "bookworm" in stages[0].split()[0], "the build stage must be Debian bookworm (the locked packages)"
    assert "image/build.py rootfs /rootfs" in stages[0]
    for lock in ("image/debian.lock", "image/requirements.lock"):
        assert lock in stages[0] or "COPY image/ " in stages[0]
    final = stages[1]
    assert final.split()[0] == "scratch"
    assert "COPY --from=build /rootfs/ /" in final
    cfg = info["config"]

    def directive(name: str) -> list[str]:
        return [ln.split(None, 1)[1] for ln in final.splitlines() if ln.startswith(name + " ")]

    assert directive("USER") == [cfg["User"]]
    assert [json.loads(v) for v in directive("ENTRYPOINT")] == [cfg["Entrypoint"]]
    assert [json.loads(v) for v in directive("CMD")] == [cfg["Cmd"]]
    assert directive("WORKDIR") == [cfg["WorkingDir"]]
    assert sorted(directive("ENV")) == sorted(cfg["Env"])
    assert cfg["Env"] == image_build.ENV
    labels = dict(v.split("=", 1) for v in directive("LABEL"))
    assert {k: json.loads(v) for k, v in labels.items()} == cfg["Labels"]


def test_app_layer_rebuilds_bit_for_bit(info: dict, tmp_path: Path) -> None:
    """Reproducibility: the app layer (wheel build, pip install, byte-compiling, tar) built
    again from scratch has the same digest. (A full `build.py build --no-cache` of all three
    layers gives the same image digest too; docs/image.md records that run.)"""
    roots = image_build.assemble(tmp_path, ("app",))
    raw = image_build.layer_tar(roots["app"])
    app = next(layer for layer in info["layers"] if layer["name"] == "app")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == app["diff_id"]


def test_wheels_layer_is_the_same_from_another_folder_and_interpreter(
    info: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproducibility across checkouts: the wheels layer assembled by another interpreter
    path (a venv created elsewhere, running this venv's pip, so only the path differs) in
    another temporary folder has the digest of the image's own wheels layer. It did not
    before RECORD's console-script lines (hashes of shebangs naming the interpreter) were
    dropped."""
    import sysconfig

    elsewhere = tmp_path / "another" / "checkout" / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(elsewhere)], check=True)
    other_python = elsewhere / "bin" / "python"
    assert other_python.is_file() and str(other_python) != sys.executable
    # This venv's pip (same version, same output) imported by the other interpreter.
    monkeypatch.setenv("PYTHONPATH", sysconfig.get_paths()["purelib"])
    monkeypatch.setattr(image_build.sys, "executable", str(other_python))
    work = tmp_path / "work"
    work.mkdir()
    roots = image_build.assemble(work, ("wheels",))
    records = list((roots["wheels"] / image_build.SITE).glob("*.dist-info/RECORD"))
    scripts = [r for r in records if any(ln.startswith("../../bin/") for ln in r.read_text().splitlines())]
    assert records and not scripts, f"RECORD still lists console scripts: {scripts}"
    raw = image_build.layer_tar(roots["wheels"])
    wheels = next(layer for layer in info["layers"] if layer["name"] == "wheels")
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == wheels["diff_id"]
