#!/usr/bin/env python3
"""Import the app to deploy on the controller and report what it does with its tasks.

Builds (or reuses) the app's wheelhouse for the controller's own Python, installs it with no
index into a throwaway virtualenv cached by the wheelhouse hash (a source tree is unpacked beside
it and put on its path, as on the hosts), and runs inspect_app.py there with the app's
environment. Prints inspect_app.py's JSON report. Nothing touches a host.

The app's environment comes as a JSON object on stdin (--env-stdin), never on a command line:
it may hold secrets (a Django SECRET_KEY), and a process's arguments are visible to every user
of the controller (ps) and in Ansible's -vvv output.

On failure it prints one short line (the last line of the error, e.g. the module that failed to
import) and, after it, the full text for `-v` readers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import posixpath
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path, PurePosixPath

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_wheelhouse  # noqa: E402  (a sibling file, not an installed module)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--constraints", default="")
    parser.add_argument("--requirements", default="")
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--broker", action="append", default=[])
    parser.add_argument("--module", required=True, help="what `celery -A` is given")
    parser.add_argument(
        "--env-stdin",
        action="store_true",
        help="read the app's environment from stdin, as a JSON object (name -> value)",
    )
    parser.add_argument("--output", required=True, help="cache folder (wheelhouses, venvs)")
    args = parser.parse_args(argv)

    python = ".".join(map(str, sys.version_info[:3]))
    try:
        house = build_wheelhouse.build(
            argparse.Namespace(
                source=args.source,
                constraints=args.constraints,
                requirements=args.requirements,
                extra=args.extra,
                broker=args.broker,
                python=python,
                arch=platform.machine(),
                output=args.output,
            )
        )
    except build_wheelhouse.WheelhouseError as exc:
        # "<command> ... failed:" then pip's output: the line read first ends with pip's error
        head, _, tail = str(exc).partition("\n")
        fail(f"report: {head.rstrip(':')}", tail)
        return 1
    venv = (Path(args.output) / "inspect" / house["hash"][:16]).resolve()
    src = venv / "src"
    venv.parent.mkdir(parents=True, exist_ok=True)
    # another run (a parallel scenario) may be building the same venv: it finishes first
    with build_wheelhouse.locked(venv.parent / f".{venv.name}.lock"):
        if not (venv / ".complete").exists():
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [
                str(venv / "bin/python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-index",
                "--disable-pip-version-check",
                "--find-links",
                house["path"],
                *house["install"],
            ]
            proc = subprocess.run(pip, capture_output=True, text=True, cwd=house["path"])
            if proc.returncode != 0:
                fail("installing the app from its wheelhouse failed", proc.stderr)
                return 1
            if house.get("app_archive"):
                with tarfile.open(Path(house["path"]) / house["app_archive"]) as tar:
                    extract(tar, src)
                add_to_path(venv, src)
            (venv / ".complete").touch()
    env = {**os.environ, **(read_env(sys.stdin.read()) if args.env_stdin else {})}
    proc = subprocess.run(
        [str(venv / "bin/python"), str(HERE / "inspect_app.py"), args.module],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(src) if src.is_dir() else "/",
    )
    if proc.returncode != 0:
        fail(f"importing {args.module} failed", proc.stderr)
        return 1
    print(proc.stdout.strip())
    return 0


def read_env(text: str) -> dict[str, str]:
    """The app's environment from a JSON object of names to values (stdin)."""
    env = json.loads(text or "{}")
    if not isinstance(env, dict):
        raise SystemExit("report: the environment on stdin is not a JSON object")
    return {str(name): str(value) for name, value in env.items()}


def fail(what: str, stderr: str) -> None:
    """One line a person reads first (the error's last line), then the full text for -v."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    print(f"{what}: {lines[-1].strip() if lines else 'no error message'}", file=sys.stderr)
    if len(lines) > 1:
        print("\n".join(["--- full error ---", *lines[-40:]]), file=sys.stderr)


def extract(tar: tarfile.TarFile, dest: Path) -> None:
    """The app's archive into dest with tarfile's "data" filter: files, folders and links that
    stay inside dest. Python 3.11.0 to 3.11.3 (Debian bookworm's is 3.11.2) have no filter: the
    same rule is checked here before extracting."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():
        path = PurePosixPath(member.name)
        inside = not path.is_absolute() and ".." not in path.parts
        if member.issym() or member.islnk():
            # a symbolic link's target is relative to its folder, a hard link's to the archive
            base = path.parent if member.issym() else PurePosixPath()
            target = PurePosixPath(posixpath.normpath(base / member.linkname))
            inside = inside and not target.is_absolute() and ".." not in target.parts
        elif not (member.isfile() or member.isdir()):
            inside = False
        if not inside:
            raise SystemExit(f"report: the app's archive holds {member.name!r}, outside the app")
    tar.extractall(dest)


def add_to_path(venv: Path, src: Path) -> None:
    """Put a source tree on the venv's sys.path (a .pth file), as release.yml does on hosts."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = subprocess.run(
        [str(venv / "bin/python"), "-c", code],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "celery_toolkit_app.pth").write_text(f"{src}\n")


if __name__ == "__main__":
    sys.exit(main())
