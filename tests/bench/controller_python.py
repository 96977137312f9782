"""What the controller's Python build costs: the same Ansible work under two interpreters.

scripts/setup-venv makes .venv with the distribution's /usr/bin/python3 when it can, rather than
the first python3 on PATH (on the test machine pyenv's, built from source without profile-guided
optimisation). This makes a virtualenv of requirements/dev.txt with each of the two (in
.cache/bench-python/, from PyPI the first time) and runs the same ansible-playbook in them,
alternately, ROUNDS times: deploy.yml on the three-host inventory of tests/test_bad_input.py,
which validates the inventory and the app (templating, the filters, the app's report) and then
cannot reach its hosts. It prints each run's CPU time (the process and its children) and wall
time, and the medians side by side.

    .venv/bin/python tests/bench/controller_python.py [ROUNDS] [PYTHON_A] [PYTHON_B]

PYTHON_A defaults to /usr/bin/python3, PYTHON_B to the first python3 on PATH that is another
interpreter (pyenv's shims resolved).
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from test_bad_input import write_inventory  # noqa: E402


def real_python(name: str) -> str:
    """The interpreter `name` runs (a pyenv shim is a script that picks one)."""
    return subprocess.run(
        [name, "-c", "import sys; print(sys.executable)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def venv_of(python: str) -> Path:
    """A virtualenv of requirements/dev.txt made with `python` (kept between runs)."""
    version = subprocess.run(
        [python, "-c", "import sys; print('.'.join(map(str, sys.version_info[:3])))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    folder = ROOT / ".cache/bench-python" / f"{Path(python).resolve().parent.parent.name}-{version}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        print(f"making {folder} with {python} (PyPI, once)", flush=True)
        subprocess.run([python, "-m", "venv", str(folder)], check=True)
        pip = [str(folder / "bin/python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-r", str(ROOT / "requirements/dev.txt")], check=True)
        (folder / ".complete").touch()
    return folder


def run(venv: Path, inventory: Path) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{venv}/bin:{env['PATH']}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    proc = subprocess.run(
        [str(venv / "bin/ansible-playbook"), "-i", str(inventory), "playbooks/deploy.yml"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # the control case of tests/test_bad_input.py: past validation, then no host to reach
    if "PLAY [Build the app's wheelhouses on the controller]" not in proc.stdout:
        sys.exit(f"{venv.name}: the run did not get past validation:\n{proc.stdout[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    a = real_python(sys.argv[2] if len(sys.argv) > 2 else "/usr/bin/python3")
    b = real_python(sys.argv[3] if len(sys.argv) > 3 else "python3")
    if Path(a).resolve() == Path(b).resolve():
        sys.exit(f"both interpreters are {a}: give two (PYTHON_A PYTHON_B)")
    venvs = {a: venv_of(a), b: venv_of(b)}
    figures: dict[str, list[tuple[float, float]]] = {a: [], b: []}
    with tempfile.TemporaryDirectory() as tmp:
        inventory = write_inventory(Path(tmp), {})
        for venv in venvs.values():  # a first run each: the app's report and its caches
            run(venv, inventory)
        for i in range(rounds):
            for python, venv in venvs.items():
                cpu, wall = run(venv, inventory)
                figures[python].append((cpu, wall))
                print(f"round {i + 1}  {python:40s} cpu {cpu:6.2f} s  wall {wall:6.2f} s")
    print()
    for python, runs in figures.items():
        cpus = [c for c, _ in runs]
        print(
            f"{python:40s} cpu median {statistics.median(cpus):6.2f} s "
            f"(min {min(cpus):.2f}, max {max(cpus):.2f})"
        )
    ratio = statistics.median(c for c, _ in figures[a]) / statistics.median(
        c for c, _ in figures[b]
    )
    print(f"cpu of {a} / cpu of {b}: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
