#!/usr/bin/env python3
"""Import the app to deploy on the controller and report what it does with its tasks.

Builds (or reuses) the app's wheelhouse for the controller's own Python, installs it with no
index into a throwaway virtualenv cached by the wheelhouse hash, and runs inspect_app.py there
with the app's environment. Prints inspect_app.py's JSON report. Nothing touches a host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build_wheelhouse  # noqa: E402  (a sibling file, not an installed module)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True)
    parser.add_argument("--constraints", default="")
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--module", required=True, help="what `celery -A` is given")
    parser.add_argument("--env", default="{}", help="JSON object: the app's environment")
    parser.add_argument("--output", required=True, help="cache folder (wheelhouses, venvs)")
    args = parser.parse_args(argv)

    python = ".".join(map(str, sys.version_info[:3]))
    try:
        house = build_wheelhouse.build(
            argparse.Namespace(
                source=args.source,
                constraints=args.constraints,
                extra=args.extra,
                python=python,
                arch=platform.machine(),
                output=args.output,
            )
        )
    except build_wheelhouse.WheelhouseError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    venv = (Path(args.output) / "inspect" / house["hash"][:16]).resolve()
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
            str(Path(house["path"]) / house["app_wheel"]),
        ]
        proc = subprocess.run(pip, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"report: installing the app failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        (venv / ".complete").touch()
    env = {**os.environ, **json.loads(args.env)}
    proc = subprocess.run(
        [str(venv / "bin/python"), str(HERE / "inspect_app.py"), args.module],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
    )
    if proc.returncode != 0:
        print(f"report: importing {args.module} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
        return 1
    print(proc.stdout.strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
