"""What Ansible's internal poll interval costs the controller while a task runs.

ansible-playbook's main process looks for task results every `internal_poll_interval` seconds
(Ansible's default 0.001) for as long as a task runs; ansible.cfg sets 0.01. This runs the same
playbook (one task on localhost that waits SECONDS) under both values, alternately, ROUNDS times,
and prints each run's wall time and the CPU time of the ansible-playbook process and its children.

    .venv/bin/python tests/bench/poll_interval.py [SECONDS] [ROUNDS]
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOK = """- name: Wait as a long task does
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Wait
      ansible.builtin.command: sleep {seconds}
      changed_when: false
"""


def run(folder: Path, interval: str) -> tuple[float, float]:
    cfg = folder / f"ansible-{interval}.cfg"
    cfg.write_text(f"[defaults]\ninternal_poll_interval = {interval}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_CONFIG"] = str(cfg)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(
        [
            str(ROOT / ".venv/bin/ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(folder / "wait.yml"),
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    intervals = ["0.001", "0.01"]
    cpu: dict[str, list[float]] = {i: [] for i in intervals}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "wait.yml").write_text(PLAYBOOK.format(seconds=seconds))
        print(f"one task of {seconds} s on localhost, {rounds} rounds, intervals alternating")
        print(f"{'round':>5} {'interval':>9} {'wall s':>7} {'CPU s':>6}")
        for r in range(1, rounds + 1):
            for interval in intervals:
                wall, used = run(folder, interval)
                cpu[interval].append(used)
                print(f"{r:>5} {interval:>9} {wall:>7.1f} {used:>6.2f}")
    means = {i: sum(v) / len(v) for i, v in cpu.items()}
    print(
        "mean CPU s: "
        + ", ".join(f"{i}: {m:.2f}" for i, m in means.items())
        + f"; saved per second of a running task: "
        f"{(means['0.001'] - means['0.01']) / seconds * 1000:.1f} ms of CPU"
    )


if __name__ == "__main__":
    main()
