#!/usr/bin/env python3
"""Build (or reuse) the wheelhouse that hosts install the Celery app from, with no index.

Runs on the controller. The wheelhouse holds the app and every pinned dependency, for one
target Python version and architecture, under a folder named after a hash of its inputs: when
the app, the constraints, the extra requirements and the target have not changed, the existing
folder is reused and nothing is built.

Two shapes of app:
- a packaged app (a folder with pyproject.toml or setup.py, or a built .whl): its wheel;
- a source tree (a folder without them, e.g. a Django project with requirements.txt): an
  archive of the folder (app-src.tar.gz, without VCS and cache files) and its requirements file.

Every wheelhouse also holds the broker's client (celery[redis] by default): the broker is Redis
whatever the app's requirements say, pinned by the toolkit's broker-constraints.txt unless the
app's own pins name the same package.

Next to the folder, <folder>.tar holds the same files in one archive: hosts receive that one
file (copying a folder file by file costs one module run per wheel, about 20 s per host).

Prints one JSON object: {"path", "archive", "hash", "kind", "app_wheel", "app_archive",
"install", "requirements", "built"}; "install" is what `pip install --no-index --find-links
<house>` takes, relative to the wheelhouse folder.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

SKIP_DIRS = {
    "build",
    "dist",
    "__pycache__",
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    "node_modules",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
}
HERE = Path(__file__).resolve().parent
# The toolkit's pins of the broker's client (celery[redis]): used for every package the app's
# own pins do not name.
BROKER_CONSTRAINTS = HERE / "broker-constraints.txt"
APP_ARCHIVE = "app-src.tar.gz"
# glibc of the oldest supported target (Debian bookworm: 2.36)
GLIBC_MINOR = 36


class WheelhouseError(Exception):
    pass


def source_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    files = []
    for root, dirs, names in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        files += [Path(root) / n for n in sorted(names) if not n.endswith((".pyc", ".pyo"))]
    return files


def inputs_hash(source: Path, inputs: list[Path], parts: list[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in source_files(source) + inputs:
        rel = path.relative_to(source) if path.is_relative_to(source) else path.name
        digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def platform_tags(arch: str) -> list[str]:
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 16, -1)]
    return tags + [f"manylinux2014_{arch}", f"linux_{arch}"]


def target_environment(python: str, arch: str) -> dict[str, str]:
    """Marker environment of the target host (pip evaluates markers for the controller's)."""
    env = default_environment()
    env.update(
        python_full_version=python,
        python_version=".".join(python.split(".")[:2]),
        platform_machine=arch,
        sys_platform="linux",
        platform_system="Linux",
        os_name="posix",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def missing_for_target(wheelhouse: Path, env: dict[str, str]) -> list[str]:
    """Requirements whose markers hold on the target but that no wheel in the house provides.

    Extras-gated requirements were resolved by pip already and are left to it."""
    have = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheelhouse.glob("*.whl")}
    missing = set()
    for wheel in wheelhouse.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            meta = Parser().parsestr(zf.read(name).decode())
        for line in meta.get_all("Requires-Dist") or []:
            req = Requirement(line)
            if req.marker is None or "extra" in str(req.marker):
                continue
            if (
                req.marker.evaluate({**env, "extra": ""})
                and canonicalize_name(req.name) not in have
            ):
                missing.add(str(Requirement(f"{req.name}{req.specifier}")))
    return sorted(missing)


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise WheelhouseError(f"{' '.join(cmd[:4])} ... failed:\n{tail}")


def app_kind(source: Path) -> str:
    """'wheel' (a built .whl), 'project' (pyproject.toml or setup.py) or 'tree' (a plain folder)."""
    if source.is_file():
        return "wheel"
    if (source / "pyproject.toml").exists() or (source / "setup.py").exists():
        return "project"
    return "tree"


def pinned_names(*files: Path | None) -> set[str]:
    """Package names that a requirements or constraints file pins or names."""
    names = set()
    for path in files:
        for line in path.read_text().splitlines() if path else ():
            line = line.split("#", 1)[0].strip()
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
            if match and not line.startswith("-"):
                names.add(canonicalize_name(match.group(0)))
    return names


def broker_constraints(app_pins: set[str]) -> list[str]:
    """The toolkit's broker-client pins, minus the packages the app pins itself."""
    return [
        str(req)
        for line in BROKER_CONSTRAINTS.read_text().splitlines()
        if (text := line.split("#", 1)[0].strip())
        and canonicalize_name((req := Requirement(text)).name) not in app_pins
    ]


def pack_tree(source: Path, archive: Path) -> None:
    """The source tree as it will run on the hosts, without VCS, caches and bytecode."""
    with tarfile.open(archive, "w:gz") as tar:
        for path in source_files(source):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)


def ensure_archive(house: Path) -> Path:
    """<house>.tar: the wheelhouse's files in one uncompressed archive (wheels are compressed
    already), made once; a wheelhouse cached before archives existed gets one now."""
    archive = house.parent / f"{house.name}.tar"
    if archive.exists():
        return archive
    tmp = archive.parent / f".{archive.name}.{os.getpid()}"
    try:
        with tarfile.open(tmp, "w") as tar:
            for path in sorted(house.iterdir()):
                tar.add(path, arcname=path.name, recursive=False)
        tmp.rename(archive)
    finally:
        tmp.unlink(missing_ok=True)
    return archive


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), held while the block runs."""
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build(args: argparse.Namespace) -> dict:
    source = Path(args.source).resolve()
    if not source.exists():
        raise WheelhouseError(f"celery_app_source {source} does not exist on the controller")
    kind = app_kind(source)
    requirements = None
    if kind == "tree":
        requirements = Path(args.requirements or source / "requirements.txt").resolve()
        if not requirements.is_file():
            raise WheelhouseError(
                f"celery_app_source {source} is a folder without pyproject.toml, setup.py or "
                f"requirements.txt ({requirements} does not exist): point celery_app_source at "
                "a Python project, a built .whl, or a source folder, and celery_app_requirements "
                "at its requirements file"
            )
    constraints = Path(args.constraints).resolve() if args.constraints else None
    if constraints and not constraints.is_file():
        raise WheelhouseError(f"celery_app_constraints {constraints} does not exist")
    broker = list(args.broker)
    pins = broker_constraints(pinned_names(constraints, requirements)) if broker else []
    key = inputs_hash(
        source,
        [p for p in (constraints, requirements) if p],
        [args.python, args.arch, *args.extra, *broker, *pins],
    )
    out = Path(args.output).resolve() / f"py{args.python}-{args.arch}-{key[:16]}"
    manifest = out / "wheelhouse.json"
    archive = out.parent / f"{out.name}.tar"
    if manifest.exists() and archive.exists():
        return {**json.loads(manifest.read_text()), "archive": str(archive), "built": False}
    out.parent.mkdir(parents=True, exist_ok=True)
    # a build of the same inputs in another run (parallel scenarios, two deploys) finishes first
    with locked(out.parent / f".{out.name}.lock"):
        if manifest.exists():
            data = {**json.loads(manifest.read_text()), "built": False}
        else:
            data = _build(args, source, kind, requirements, constraints, broker, pins, key, out)
        return {**data, "archive": str(ensure_archive(out))}


def _build(
    args: argparse.Namespace,
    source: Path,
    kind: str,
    requirements: Path | None,
    constraints: Path | None,
    broker: list[str],
    pins: list[str],
    key: str,
    out: Path,
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    app_wheel, app_archive = "", ""
    try:
        if kind == "wheel":
            shutil.copy2(source, tmp / source.name)
            app_wheel = source.name
            targets = [str(tmp / app_wheel)]
            install = [app_wheel]
        elif kind == "tree":
            pack_tree(source, tmp / APP_ARCHIVE)
            app_archive = APP_ARCHIVE
            shutil.copy2(requirements, tmp / "requirements.txt")
            targets = ["-r", str(tmp / "requirements.txt")]
            install = ["-r", "requirements.txt"]
        else:
            with tempfile.TemporaryDirectory() as build_dir:
                shutil.copytree(source, Path(build_dir) / "src", ignore=_ignore)
                run(
                    [
                        sys.executable,
                        "-m",
                        "pip",
                        "wheel",
                        "--no-deps",
                        "-q",
                        "-w",
                        str(tmp),
                        str(Path(build_dir) / "src"),
                    ]
                )
            wheels = list(tmp.glob("*.whl"))
            if len(wheels) != 1:
                raise WheelhouseError(f"building {source} gave {len(wheels)} wheels, expected 1")
            app_wheel = wheels[0].name
            targets = [str(tmp / app_wheel)]
            install = [app_wheel]
        py = "".join(args.python.split(".")[:2])
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--only-binary=:all:",
            "--python-version",
            args.python,
            "--implementation",
            "cp",
            "--abi",
            f"cp{py}",
            "--abi",
            "abi3",
            "--abi",
            "none",
            "-d",
            str(tmp),
        ]
        for tag in platform_tags(args.arch):
            cmd += ["--platform", tag]
        if constraints:
            cmd += ["-c", str(constraints)]
        if pins:
            (tmp / "broker-constraints.txt").write_text("\n".join(pins) + "\n")
            cmd += ["-c", str(tmp / "broker-constraints.txt")]
        try:
            run(cmd + targets + [*args.extra, *broker])
        except WheelhouseError as exc:
            if not pins:
                raise
            raise WheelhouseError(
                f"{exc}\nThe app's pins may conflict with the toolkit's pins of the broker's "
                f"client ({', '.join(pins)}): pin those packages in celery_app_constraints."
            ) from None
        env = target_environment(args.python, args.arch)
        for _ in range(5):  # close over dependencies whose markers only the target meets
            missing = missing_for_target(tmp, env)
            if not missing:
                break
            run(cmd + missing)
        else:
            raise WheelhouseError(f"could not complete the wheelhouse for the target: {missing}")
        data = {
            "path": str(out),
            "hash": key,
            "kind": kind,
            "app_wheel": app_wheel,
            "app_archive": app_archive,
            "install": install + list(args.extra) + broker,
            "requirements": sorted(p.name for p in tmp.glob("*.whl")),
        }
        (tmp / "wheelhouse.json").write_text(json.dumps(data, indent=2) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**data, "built": True}


def _ignore(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP_DIRS or n.endswith(".egg-info")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="project folder or .whl of the app")
    parser.add_argument("--constraints", default="", help="pip constraints file (pins)")
    parser.add_argument(
        "--requirements", default="", help="a source tree's requirements file (default: its own)"
    )
    parser.add_argument("--extra", action="append", default=[], help="extra requirement")
    parser.add_argument(
        "--broker", action="append", default=[], help="the broker's client, e.g. celery[redis]"
    )
    parser.add_argument("--python", required=True, help="target Python, e.g. 3.11.2")
    parser.add_argument("--arch", required=True, help="target architecture, e.g. x86_64")
    parser.add_argument("--output", required=True, help="folder that holds wheelhouses")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(build(args)))
    except WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
