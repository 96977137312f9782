#!/usr/bin/env python3
"""Build (or reuse) the wheelhouse that hosts install the Celery app from, with no index.

Runs on the controller. The wheelhouse holds the app's wheel and every pinned dependency, for
one target Python version and architecture, under a folder named after a hash of its inputs:
when the app, the constraints, the extra requirements and the target have not changed, the
existing folder is reused and nothing is built.

Prints one JSON object: {"path", "hash", "app_wheel", "requirements", "built"}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

SKIP_DIRS = {"build", "dist", "__pycache__", ".git", ".venv", ".pytest_cache", ".ruff_cache"}
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


def inputs_hash(
    source: Path, constraints: Path | None, extras: list[str], python: str, arch: str
) -> str:
    digest = hashlib.sha256()
    for part in (python, arch, *extras):
        digest.update(part.encode() + b"\0")
    for path in source_files(source) + ([constraints] if constraints else []):
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


def build(args: argparse.Namespace) -> dict:
    source = Path(args.source).resolve()
    if not source.exists():
        raise WheelhouseError(f"celery_app_source {source} does not exist on the controller")
    if (
        source.is_dir()
        and not (source / "pyproject.toml").exists()
        and not (source / "setup.py").exists()
    ):
        raise WheelhouseError(
            f"celery_app_source {source} is a folder without pyproject.toml or setup.py: "
            "point it at a Python project or a built .whl"
        )
    constraints = Path(args.constraints).resolve() if args.constraints else None
    if constraints and not constraints.is_file():
        raise WheelhouseError(f"celery_app_constraints {constraints} does not exist")
    key = inputs_hash(source, constraints, args.extra, args.python, args.arch)
    out = Path(args.output).resolve() / f"py{args.python}-{args.arch}-{key[:16]}"
    manifest = out / "wheelhouse.json"
    if manifest.exists():
        return {**json.loads(manifest.read_text()), "built": False}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        if source.is_file():
            shutil.copy2(source, tmp / source.name)
            app_wheel = source.name
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
        run(cmd + [str(tmp / app_wheel), *args.extra])
        env = target_environment(args.python, args.arch)
        for _ in range(5):  # close over dependencies whose markers only the target meets
            missing = missing_for_target(tmp, env)
            if not missing:
                break
            run(cmd + missing)
        else:
            raise WheelhouseError(f"could not complete the wheelhouse for the target: {missing}")
        requirements = sorted(p.name for p in tmp.glob("*.whl"))
        data = {"path": str(out), "hash": key, "app_wheel": app_wheel, "requirements": requirements}
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
    parser.add_argument("--extra", action="append", default=[], help="extra requirement")
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
