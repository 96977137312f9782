"""Run the project's playbooks from a testinfra test the way a user does.

Molecule exports ANSIBLE_CONFIG and ANSIBLE_FORCE_COLOR for its own runs; a child
ansible-playbook would inherit them and print colour codes. Here it uses the repository's
ansible.cfg, without colour, against the scenario's inventory (with its linked group_vars).
"""

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_playbook(
    name: str, *extra: str, check: bool = True, inventories: tuple[Path, ...] = ()
) -> tuple[subprocess.CompletedProcess, float]:
    """Run playbooks/<name>; `inventories` are further inventory sources layered on top."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    sources = [arg for source in (inventory, *inventories) for arg in ("-i", str(source))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", NO_COLOR="1")
    started = time.monotonic()
    proc = subprocess.run(
        ["ansible-playbook", *sources, str(ROOT / "playbooks" / name), *extra],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    seconds = round(time.monotonic() - started, 1)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return proc, seconds
