#!/usr/bin/env python3
"""Build kubetier's container image without Docker: `make image`.

    build.py build [--out DIR]   assemble the image; print its digest and size
    build.py lock                re-resolve image/debian.lock and image/requirements.lock

The image is one multi-purpose root filesystem (operator, router, node agent, engine
simulator: all are `kubetier <command>`), made of three layers:

1. base: Debian bookworm's own python3.11 runtime (python3.11-minimal, libpython3.11-stdlib
   and their shared libraries), fetched with `apt-get download` at the versions and sha256
   sums pinned in image/debian.lock, unpacked without maintainer scripts; a non-root user
   `kubetier` (65532:65532, the chart's runAsUser) and nothing else: no shell scripts run
   at start, no package manager.
2. wheels: the project's runtime dependencies as pinned wheels (image/requirements.lock,
   sha256-checked by pip), minus matplotlib (only the fleet simulator's plots use it).
3. app: the kubetier package, built as a wheel from this working tree, and its `kubetier`
   entry point.

Reproducible: every entry has mtime SOURCE_DATE_EPOCH (0 unless set), uid/gid 0 (the home
directory 65532), no user/group names; entries are sorted; gzip headers carry no name or
time; .pyc files are compiled with unchecked-hash invalidation (no source mtimes). Same
locks + same source tree + same zlib -> same layer digests -> same image digest.

Output (default build/image/, ignored by git):
    oci/                   an OCI image layout (index.json -> manifest -> config + layers)
    kubetier-image.tar     the same layout as one tar (`docker load`, `podman load`,
                           `skopeo copy oci-archive:`), plus a docker-style manifest.json
    image.json             digest, size, layer digests (read by tests and docs)
Downloads are cached in $KUBETIER_CACHE/image (default ~/.cache/kubetier/image).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "image"
CACHE = Path(os.environ.get("KUBETIER_CACHE") or Path.home() / ".cache" / "kubetier").expanduser() / "image"
DEBIAN_LOCK = HERE / "debian.lock"
WHEELS_LOCK = HERE / "requirements.lock"

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
UID = GID = 65532
USER = "kubetier"
HOME = f"/home/{USER}"
SITE = "usr/local/lib/python3.11/dist-packages"
PYTHON = "/usr/bin/python3.11"
ENTRYPOINT = "/usr/local/bin/kubetier"
ENV = [
    "PATH=/usr/local/bin:/usr/bin:/bin",
    f"HOME={HOME}",
    "LANG=C.UTF-8",
    "PYTHONUNBUFFERED=1",
    # The root filesystem is read-only in the chart: never try to write __pycache__.
    "PYTHONDONTWRITEBYTECODE=1",
]
REPOSITORY = "ghcr.io/kubetier/kubetier"

# Roots of the Debian closure, and what the closure may leave out: dpkg/perl/tar come in
# only through maintainer-script and install-info dependencies, which never run here.
DEBIAN_ROOTS = ("python3.11-minimal", "libpython3.11-stdlib", "netbase")
DEBIAN_EXCLUDE = frozenset(
    {
        "dpkg",
        "install-info",
        "perl",
        "perl-base",
        "perl-modules-5.36",
        "libperl5.36",
        "libgdbm-compat4",
        "tar",
        "mailcap",
        "mime-support",
        "debconf",
        "readline-common",
    }
)
# Runtime dependencies left out of the image (lazily imported by `kubetier simulate` plots).
WHEELS_EXCLUDE = ("matplotlib",)
# Debian bookworm has glibc 2.36: every manylinux tag up to 2_36 runs on it (pip does not
# expand an explicit --platform to older manylinux tags by itself).
WHEEL_PLATFORM = [a for minor in range(36, 16, -1) for a in ("--platform", f"manylinux_2_{minor}_x86_64")]
WHEEL_PLATFORM += ["--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp"]
WHEEL_PLATFORM += ["--abi", "cp311", "--abi", "abi3", "--abi", "none", "--only-binary=:all:"]

# Unpacked Debian paths kept out of the image: documentation other than licences, manuals.
DROP_PREFIXES = ("usr/share/man/", "usr/share/info/", "usr/share/lintian/", "usr/share/locale/")


def log(msg: str) -> None:
    print(f"[image] {msg}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kw)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- locks


def _runtime_requirements() -> list[str]:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [d for d in deps if not d.split("==")[0].strip().lower().startswith(WHEELS_EXCLUDE)]


def debian_closure() -> list[str]:
    """Depends/Pre-Depends closure of DEBIAN_ROOTS, not descending into DEBIAN_EXCLUDE.

    Of alternatives (`a | b`) the first is taken, as apt would.
    """
    seen: set[str] = set()
    todo = list(DEBIAN_ROOTS)
    while todo:
        name = todo.pop()
        if name in seen or name in DEBIAN_EXCLUDE:
            continue
        seen.add(name)
        out = subprocess.run(["apt-cache", "depends", name], check=True, capture_output=True, text=True).stdout
        first_of_group = True
        for line in out.splitlines()[1:]:
            stripped = line.strip()
            alternative = stripped.startswith("|")
            kind, _, dep = stripped.lstrip("|").partition(": ")
            if kind in ("Depends", "PreDepends") and first_of_group and not dep.startswith("<"):
                todo.append(dep)
            first_of_group = not alternative
    return sorted(seen)


def lock() -> None:
    """Resolve the Debian closure and the wheel set now, pinning versions and sha256 sums."""
    names = debian_closure()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # apt's _apt user downloads into it
        run(["apt-get", "download", *names], cwd=tmp, stdout=subprocess.DEVNULL)
        lines = []
        for deb in sorted(Path(tmp).glob("*.deb")):
            fields = subprocess.run(
                ["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            meta = dict(line.split(": ", 1) for line in fields.splitlines())
            lines.append(f"{meta['Package']}={meta['Version']} {meta['Architecture']} sha256:{sha256_file(deb)}")
    DEBIAN_LOCK.write_text(
        "# Debian bookworm packages of the image's base layer: name=version arch sha256.\n"
        "# Regenerate with `python3 image/build.py lock` (apt-get update first).\n" + "\n".join(lines) + "\n"
    )
    log(f"wrote {DEBIAN_LOCK.relative_to(REPO)} ({len(lines)} packages)")

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed"]
            + [*WHEEL_PLATFORM, "--target", str(Path(tmp) / "t"), "--report", str(report)]
            + _runtime_requirements()
        )
        items = json.loads(report.read_text())["install"]
    reqs = []
    for it in sorted(items, key=lambda i: i["metadata"]["name"].lower()):
        sha = it["download_info"]["archive_info"]["hashes"]["sha256"]
        reqs.append(f"{it['metadata']['name']}=={it['metadata']['version']} --hash=sha256:{sha}")
    WHEELS_LOCK.write_text(
        "# Runtime wheels of the image (cp311, manylinux x86_64), every transitive dependency pinned\n"
        "# with its sha256. Regenerate with `python3 image/build.py lock` after changing\n"
        "# pyproject.toml's dependencies.\n" + "\n".join(reqs) + "\n"
    )
    log(f"wrote {WHEELS_LOCK.relative_to(REPO)} ({len(reqs)} wheels)")


def debian_lock() -> list[tuple[str, str, str]]:
    entries = []
    for line in DEBIAN_LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            spec, _arch, sha = line.split()
            name, version = spec.split("=", 1)
            entries.append((name, version, sha.removeprefix("sha256:")))
    return entries


# --------------------------------------------------------------------------- fetch


def fetch_debs() -> list[Path]:
    """The locked .debs, from the cache or `apt-get download`, each sha256-checked."""
    debs_dir = CACHE / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    missing = []
    for name, version, sha in debian_lock():
        matches = [p for p in debs_dir.glob(f"{name}_*.deb") if sha256_file(p) == sha]
        if matches:
            paths.append(matches[0])
        else:
            missing.append((name, version, sha))
    if missing:
        log(f"apt-get download {len(missing)} packages")
        with tempfile.TemporaryDirectory(dir=debs_dir) as tmp:
            os.chmod(tmp, 0o755)  # apt's _apt user downloads into it
            res = subprocess.run(
                ["apt-get", "download", *[f"{n}={v}" for n, v, _ in missing]], cwd=tmp, capture_output=True, text=True
            )
            if res.returncode != 0:
                sys.exit(
                    "image: apt-get download failed (a locked version may have left the archive: run "
                    f"`apt-get update && python3 image/build.py lock`):\n{res.stderr.strip()}"
                )
            for name, version, sha in missing:
                got = list(Path(tmp).glob(f"{name}_*.deb"))
                if len(got) != 1 or sha256_file(got[0]) != sha:
                    sys.exit(f"image: {name}={version} does not match its sha256 in {DEBIAN_LOCK.name}")
                target = debs_dir / got[0].name
                shutil.move(got[0], target)
                paths.append(target)
    return sorted(paths)


def install_wheels(target: Path) -> None:
    run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes", "--no-compile"]
        + [*WHEEL_PLATFORM, "--target", str(target), "-r", str(WHEELS_LOCK)]
    )


def app_sources() -> list[str]:
    """The files the kubetier wheel is built from: git's view of the working tree (tracked
    and untracked-but-not-ignored), or, without git (a Docker build context), every file
    but caches."""
    paths = ["pyproject.toml", "README.md", "operator/kubetier"]
    if (REPO / ".git").exists() and shutil.which("git"):
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", *paths],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout.split(b"\0")
        files = [f.decode() for f in out if f]
    else:
        files = paths[:2] + [
            p.relative_to(REPO).as_posix()
            for p in (REPO / paths[2]).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        ]
    return sorted(f for f in files if (REPO / f).is_file())


def build_app_wheel(workdir: Path) -> Path:
    """kubetier's wheel from this working tree's sources (never a stale build/ folder)."""
    src = workdir / "src"
    for rel in app_sources():
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / rel, dest)
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(workdir / "wheel"), str(src)]
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(max(EPOCH, 315532800))}
    # pip fetches the pinned build backend (pyproject's build-system) from PyPI: one retry
    # for a transient index failure.
    if subprocess.run(cmd, env=env).returncode != 0:
        log("pip wheel failed; retrying once")
        run(cmd, env=env)
    return next((workdir / "wheel").glob("kubetier-*.whl"))


# --------------------------------------------------------------------------- rootfs


def _usr_path(name: str) -> str:
    """Merged /usr: bookworm's libc6 still ships /lib/..., the image keeps only /usr/lib/..."""
    name = name.removeprefix("./")
    for top in ("bin", "sbin", "lib", "lib64"):
        if name == top or name.startswith(top + "/"):
            return "usr/" + name
    return name


def unpack_debs(debs: list[Path], root: Path) -> None:
    for deb in debs:
        data = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                name = _usr_path(member.name)
                if not name or name == ".":
                    continue
                if name.startswith(DROP_PREFIXES) or (
                    name.startswith("usr/share/doc/") and not name.endswith(("/copyright", "/"))
                ):
                    if not member.isdir():
                        continue
                member.name = name
                if member.islnk():
                    member.linkname = _usr_path(member.linkname)
                tar.extract(member, root, filter="fully_trusted", set_attrs=True)
    for top in ("bin", "sbin", "lib", "lib64"):
        (root / "usr" / top).mkdir(parents=True, exist_ok=True)
        (root / top).symlink_to(f"usr/{top}")


def add_user(root: Path) -> None:
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text(
        f"root:x:0:0:root:/root:/usr/sbin/nologin\n{USER}:x:{UID}:{GID}:{USER}:{HOME}:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text(f"root:x:0:\n{USER}:x:{GID}:\n")
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    (etc / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
    (root / HOME.lstrip("/")).mkdir(parents=True)
    (root / "tmp").mkdir(mode=0o1777, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    for d in ("proc", "dev", "sys", "root", "run"):
        (root / d).mkdir(exist_ok=True)


def compile_pyc(root: Path, subdir: str) -> None:
    """Byte-compile with source-hash invalidation: reproducible, and nothing to write at run time.

    In a child with PYTHONHASHSEED=0: set and frozenset constants are marshalled in hash
    order, which differs between processes under hash randomisation (two builds of the same
    layer differed until this was fixed)."""
    code = (
        "import compileall, py_compile, sys\n"
        "ok = compileall.compile_dir(sys.argv[1], quiet=2, ddir=sys.argv[2], workers=1,\n"
        "    invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n"
        "sys.exit(0 if ok else 3)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(root / subdir), "/" + subdir], env={**os.environ, "PYTHONHASHSEED": "0"}
    )
    if res.returncode == 3:
        log(f"warning: some files under /{subdir} did not compile (kept as source)")
    elif res.returncode != 0:
        raise SystemExit(f"image: byte-compiling /{subdir} failed")


def _drop_install_traces(site: Path) -> None:
    """Remove what ties an installed layer to the folder and interpreter it was built with.

    pip records the wheel's temporary path in direct_url.json (and its hash in RECORD): a
    different path every build. The console scripts pip wrote under ``bin/`` are not
    shipped (the image has its own entrypoint), but every RECORD still lists them with a
    hash of their shebang, which names the installing interpreter: a build from another
    venv (a fresh clone elsewhere) gave another digest, for the app layer and for seven
    dists of the wheels layer (charset_normalizer, httpx, idna, jsonpatch, jsonpointer,
    kopf, websocket_client). Neither is needed at run time; both go, in every layer pip
    installs."""
    for record in site.glob("*.dist-info/RECORD"):
        dist = record.parent.name
        lines = [
            ln
            for ln in record.read_text().splitlines()
            if not ln.startswith((f"{dist}/direct_url.json,", "../../bin/", "bin/"))
        ]
        record.write_text("\n".join(lines) + "\n")
    for direct in site.glob("*.dist-info/direct_url.json"):
        direct.unlink()


def write_entrypoint(root: Path) -> None:
    path = root / ENTRYPOINT.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{PYTHON}\nimport sys\n\nfrom kubetier.cli import main\n\nsys.exit(main())\n")
    path.chmod(0o755)


# --------------------------------------------------------------------------- layers


def layer_tar(root: Path, owned_by_user: tuple[str, ...] = ()) -> bytes:
    """An uncompressed, reproducible tar of `root`: sorted, fixed times, numeric root owner."""
    buf = io.BytesIO()
    paths = sorted(p for p in root.rglob("*"))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        seen_inodes: dict[tuple[int, int], str] = {}
        for path in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            info = tarfile.TarInfo(rel)
            info.mtime = EPOCH
            info.mode = st.st_mode & 0o7777
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if rel in owned_by_user:
                info.uid, info.gid = UID, GID
            if path.is_symlink():
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(path)
                info.mode = 0o777
                tar.addfile(info)
            elif path.is_dir():
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif path.is_file():
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    info.type = tarfile.LNKTYPE
                    info.linkname = seen_inodes[key]
                    tar.addfile(info)
                    continue
                seen_inodes[key] = rel
                info.size = st.st_size
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                raise SystemExit(f"image: unexpected file type at {rel}")
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return out.getvalue()


def _blob(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}"


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def write_layout(layers: list[tuple[str, bytes]], out: Path, version: str) -> dict:
    oci = out / "oci"
    if oci.exists():
        shutil.rmtree(oci)
    blobs = oci / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH))
    diff_ids, descriptors, history = [], [], []
    for name, raw in layers:
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        gz = gzip_bytes(raw)
        descriptors.append(
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": _blob(blobs, gz), "size": len(gz)}
        )
        history.append({"created": created, "created_by": f"image/build.py: {name} layer"})
    labels = {
        "org.opencontainers.image.title": "kubetier",
        "org.opencontainers.image.description": "kubetier operator, router, node agent and engine simulator",
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.source": "https://github.com/kubetier/kubetier",
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{UID}:{GID}",
            "Entrypoint": [ENTRYPOINT],
            "Cmd": ["--help"],
            "Env": ENV,
            "WorkingDir": HOME,
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }
    config_bytes = _canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _blob(blobs, config_bytes),
            "size": len(config_bytes),
        },
        "layers": descriptors,
        "annotations": {"org.opencontainers.image.version": version},
    }
    manifest_bytes = _canonical(manifest)
    manifest_digest = _blob(blobs, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {
                    "org.opencontainers.image.ref.name": version,
                    "io.containerd.image.name": f"{REPOSITORY}:{version}",
                },
            }
        ],
    }
    (oci / "index.json").write_bytes(_canonical(index))
    (oci / "oci-layout").write_bytes(_canonical({"imageLayoutVersion": "1.0.0"}))
    # docker load (before Docker 25) reads manifest.json; newer clients read index.json.
    docker_manifest = [
        {
            "Config": "blobs/sha256/" + manifest["config"]["digest"].split(":")[1],
            "RepoTags": [f"{REPOSITORY}:{version}"],
            "Layers": ["blobs/sha256/" + d["digest"].split(":")[1] for d in descriptors],
        }
    ]
    (oci / "manifest.json").write_bytes(_canonical(docker_manifest))
    return {
        "digest": manifest_digest,
        "compressed_size": sum(d["size"] for d in descriptors) + len(config_bytes) + len(manifest_bytes),
        "uncompressed_size": sum(len(raw) for _, raw in layers),
        "layers": [
            {"name": n, "digest": d["digest"], "size": d["size"], "diff_id": i}
            for (n, _), d, i in zip(layers, descriptors, diff_ids)
        ],
        "config": config["config"],
        "reference": f"{REPOSITORY}:{version}",
    }


def write_archive(out: Path) -> Path:
    """The OCI layout as one reproducible tar."""
    archive = out / "kubetier-image.tar"
    oci = out / "oci"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(oci.rglob("*"), key=lambda p: p.relative_to(oci).as_posix()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(oci).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, 0, 0, "", ""
            info.mode = 0o755 if path.is_dir() else 0o644
            if path.is_file():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return archive


def _key(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:32]


def layer_keys() -> dict[str, str]:
    """Cache keys: a layer is rebuilt when this script, its lock or (app) a source changes."""
    script = Path(__file__).read_bytes()
    sources = b"".join(rel.encode() + b"\0" + (REPO / rel).read_bytes() for rel in app_sources())
    return {
        "base": _key(script, DEBIAN_LOCK.read_bytes(), str(EPOCH).encode()),
        "wheels": _key(script, WHEELS_LOCK.read_bytes(), str(EPOCH).encode()),
        "app": _key(script, sources, str(EPOCH).encode()),
    }


def assemble(tmp: Path, only: tuple[str, ...] = ("base", "wheels", "app")) -> dict[str, Path]:
    """Each layer's root filesystem as a folder under tmp."""
    t0 = time.monotonic()
    roots = {name: tmp / name for name in only}
    for d in roots.values():
        d.mkdir()
    if "base" in roots:
        debs = fetch_debs()
        unpack_debs(debs, roots["base"])
        add_user(roots["base"])
        compile_pyc(roots["base"], "usr/lib/python3.11")
        log(f"base layer assembled from {len(debs)} Debian packages ({time.monotonic() - t0:.0f}s)")
    if "wheels" in roots:
        install_wheels(roots["wheels"] / SITE)
        shutil.rmtree(roots["wheels"] / SITE / "bin", ignore_errors=True)
        _drop_install_traces(roots["wheels"] / SITE)
        compile_pyc(roots["wheels"], SITE)
        log(f"wheels layer assembled ({time.monotonic() - t0:.0f}s)")
    if "app" in roots:
        app = roots["app"]
        wheel = build_app_wheel(tmp / "appbuild")
        run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target"]
            + [str(app / SITE), str(wheel)]
        )
        shutil.rmtree(app / SITE / "bin", ignore_errors=True)
        _drop_install_traces(app / SITE)
        write_entrypoint(app)
        compile_pyc(app, SITE)
        log(f"app layer assembled ({time.monotonic() - t0:.0f}s)")
    return roots


def build(out: Path, use_cache: bool = True) -> dict:
    t0 = time.monotonic()
    version = (REPO / "operator/kubetier/__init__.py").read_text().split('__version__ = "')[1].split('"')[0]
    out.mkdir(parents=True, exist_ok=True)
    cache = CACHE / "layers"
    cache.mkdir(parents=True, exist_ok=True)
    keys = layer_keys()
    layers: list[tuple[str, bytes]] = []
    todo = tuple(n for n, k in keys.items() if not (use_cache and (cache / f"{n}-{k}.tar").is_file()))
    with tempfile.TemporaryDirectory(prefix="kubetier-image-") as tmp_s:
        roots = assemble(Path(tmp_s), todo) if todo else {}
        for name, key in keys.items():
            cached = cache / f"{name}-{key}.tar"
            if name in roots:
                raw = layer_tar(roots[name], owned_by_user=(HOME.lstrip("/"),) if name == "base" else ())
                cached.write_bytes(raw)
            else:
                log(f"{name} layer: cached ({cached.name})")
                raw = cached.read_bytes()
            layers.append((name, raw))
    log(f"layers ready ({time.monotonic() - t0:.0f}s)")
    info = write_layout(layers, out, version)
    archive = write_archive(out)
    info["archive"] = str(archive.relative_to(REPO) if archive.is_relative_to(REPO) else archive)
    info["archive_size"] = archive.stat().st_size
    info["build_seconds"] = round(time.monotonic() - t0, 1)
    info["cached_layers"] = [n for n in keys if n not in todo]
    (out / "image.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def rootfs(dest: Path) -> None:
    """The image's root filesystem as one folder (the Dockerfile's build stage copies it)."""
    with tempfile.TemporaryDirectory(prefix="kubetier-rootfs-") as tmp_s:
        roots = assemble(Path(tmp_s))
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("base", "wheels", "app"):
            shutil.copytree(roots[name], dest, symlinks=True, dirs_exist_ok=True)
    os.chown(dest / HOME.lstrip("/"), UID, GID)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_build = sub.add_parser("build", help="assemble the image (OCI layout + tarball) and print its digest")
    p_build.add_argument("--out", type=Path, default=REPO / "build" / "image", help="output folder (build/image)")
    p_build.add_argument("--no-cache", action="store_true", help="rebuild every layer (cached by input hash)")
    p_rootfs = sub.add_parser("rootfs", help="write the image's root filesystem to a folder (Dockerfile)")
    p_rootfs.add_argument("dest", type=Path)
    sub.add_parser("lock", help="re-resolve the Debian and wheel locks (needs apt-get update and PyPI)")
    args = parser.parse_args(argv)
    if args.cmd == "lock":
        lock()
        return 0
    if args.cmd == "rootfs":
        rootfs(args.dest)
        return 0
    info = build(args.out.resolve(), use_cache=not args.no_cache)
    mib = 1024 * 1024
    print(f"image {info['reference']}")
    print(f"  digest             {info['digest']}")
    print(f"  compressed size    {info['compressed_size'] / mib:.1f} MiB (what a registry stores and a node pulls)")
    print(f"  uncompressed size  {info['uncompressed_size'] / mib:.1f} MiB (unpacked root filesystem)")
    for layer in info["layers"]:
        print(f"  layer {layer['name']:<7} {layer['digest']}  {layer['size'] / mib:.1f} MiB")
    print(f"  OCI layout         {args.out}/oci   tarball {info['archive']}")
    print(f"  built in {info['build_seconds']}s (layers from cache: {', '.join(info['cached_layers']) or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
