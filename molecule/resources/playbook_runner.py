"""Helpers the scenarios' testinfra tests share: run the project's playbooks the way a user
does, read the reference app's task ledger, record measured figures.

Molecule exports ANSIBLE_CONFIG and ANSIBLE_FORCE_COLOR for its own runs; a child
ansible-playbook would inherit them and print colour codes. Here it uses the repository's
ansible.cfg, without colour, against the scenario's inventory (with its linked group_vars).
"""

import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable
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


def play_recap(stdout: str) -> dict[str, dict[str, int]]:
    """ansible-playbook's PLAY RECAP: host -> its counters (ok, changed, unreachable, failed,
    skipped, rescued, ignored)."""
    return {
        host: {name: int(count) for name, count in re.findall(r"(\w+)=(\d+)", counters)}
        for host, counters in re.findall(r"^(\S+)\s+:\s+(ok=\d+.*)$", stdout, re.M)
    }


def run_as_app(host, app: str, script: str, *args: str) -> str:
    """Run a Python script on `host` as the app (<app>-run python -c SCRIPT ARGS...), with its
    environment and Redis user; its output."""
    words = " ".join(shlex.quote(str(word)) for word in (script, *args))
    return host.check_output(f"{app}-run python -c {words}")


# Runs on a host as the app (refapp-run python -c LEDGER PREFIX): the refapp:ledger entries whose
# token starts with PREFIX- (token -> times it ran) and the length of each queue.
LEDGER = """
import json, sys
from refapp import app
prefix = sys.argv[1]
with app.connection_for_write() as conn:
    client = conn.default_channel.client
    ledger = {k.decode(): int(v) for k, v in client.hgetall("refapp:ledger").items()
              if k.decode().startswith(prefix + "-")}
    queued = {q: client.llen(q) for q in ("high", "default", "low")}
print(json.dumps({"ledger": ledger, "queued": queued}))
"""


def wait_until_ran(
    read: Callable[[], dict], expected: int, queues: Iterable[str], timeout: float = 240
) -> dict:
    """Poll read() (LEDGER's output) until `expected` tokens ran and `queues` are empty, then
    read once more 3 s later: a task run twice would show up by then, not later."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read()
        if len(state["ledger"]) >= expected and not any(state["queued"][q] for q in queues):
            time.sleep(3)
            return read()
        time.sleep(2)
    return read()


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll predicate() every second until it holds or `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(1)
    return predicate()


def record_figure(file_name: str, name: str, value: object) -> None:
    """Keep a measured figure in .cache/<file_name> (JSON) for the closing notes."""
    path = ROOT / ".cache" / file_name
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = value
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(figures, indent=2))
