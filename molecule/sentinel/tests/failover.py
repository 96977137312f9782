"""What the sentinel scenario's tests and tests/bench/sentinel.py do to a replicated broker under
the reference app's load, and count: a producer on a worker VM (load_app.py) publishing a task
every 20 ms while the primary is lost (`docker kill` of its VM) or switched over, then the
ledger read back: tasks acknowledged to the producer but never run (lost), run twice, and the
longest time the queues were not consumed.
"""

import json
import subprocess
import time
import uuid
from pathlib import Path

from test_sentinel import NODES, container_running, in_sync, primary_of_all

from playbook_runner import LEDGER, run_playbook, wait_for, wait_until_ran

WORKERS = ("sentinel-worker-1", "sentinel-worker-2")
PRODUCER = "sentinel-worker-2"
LOAD = Path(__file__).with_name("load_app.py")
# Runs as the app (refapp-run python -c RAN PREFIX): when each task of PREFIX ran (the workers'
# clock, the VMs' shared kernel's): refapp:ledger:ran, which the ledger writes with a replicated
# broker.
RAN = """
import json, sys
from refapp import app
with app.connection_for_write() as conn:
    ran = conn.default_channel.client.hgetall("refapp:ledger:ran")
print(json.dumps([float(v) for k, v in ran.items() if k.decode().startswith(sys.argv[1] + "-")]))
"""


def docker_exec(node: str, *command: str, check: bool = True) -> str:
    proc = subprocess.run(
        ["docker", "exec", node, *command], capture_output=True, text=True, timeout=120
    )
    if check:
        assert proc.returncode == 0, f"{node}: {command}: {proc.stdout}{proc.stderr}"
    return proc.stdout


def units(node: str) -> dict[str, str]:
    """The app's services on `node`: unit -> its MainPID, NRestarts and ActiveState."""
    names = ["refapp-worker@fast", "refapp-worker@slow"]
    if node == "sentinel-worker-1":
        names += ["refapp-beat", "refapp-flower"]
    found = {}
    for name in names:
        out = docker_exec(node, "systemctl", "show", "-p", "MainPID,NRestarts,ActiveState", name)
        found[name] = " ".join(sorted(out.split()))
    return found


def all_units() -> dict[str, dict[str, str]]:
    return {node: units(node) for node in WORKERS}


def ledger(prefix: str) -> dict:
    return json.loads(docker_exec(PRODUCER, "refapp-run", "python", "-c", LEDGER, prefix))


class Load:
    """load_app.py on the producer VM, in the background, as the app."""

    def __init__(self, name: str):
        self.prefix = f"{name}-{uuid.uuid4().hex[:8]}"
        self.out = f"/var/tmp/load-{self.prefix}.json"
        subprocess.run(
            ["docker", "exec", "-i", PRODUCER, "sh", "-c", "cat > /var/tmp/load_app.py"],
            input=LOAD.read_text(),
            text=True,
            check=True,
        )
        subprocess.run(
            [
                "docker",
                "exec",
                "-d",
                PRODUCER,
                "refapp-run",
                "python",
                "/var/tmp/load_app.py",
                self.prefix,
                self.out,
            ],
            check=True,
        )
        assert wait_for(lambda: len(ledger(self.prefix)["ledger"]) > 50, 60), "no load ran"

    def finish(self) -> dict:
        """Stop publishing, wait until every acknowledged task ran; the figures."""
        docker_exec(PRODUCER, "touch", self.out + ".stop")
        done = wait_for(
            lambda: (
                subprocess.run(["docker", "exec", PRODUCER, "test", "-e", self.out]).returncode == 0
            ),
            60,
        )
        assert done, "the producer did not finish"
        result = json.loads(docker_exec(PRODUCER, "cat", self.out))
        when = dict(result["acked"])
        acked = set(when)
        state = wait_until_ran(
            lambda: ledger(self.prefix), len(acked), ["high", "default", "low"], 120
        )
        counts = state["ledger"]
        ran = sorted(
            json.loads(docker_exec(PRODUCER, "refapp-run", "python", "-c", RAN, self.prefix))
        )
        stall = max((b - a for a, b in zip(ran, ran[1:], strict=False)), default=0.0)
        unknown = set(counts) - {f"{self.prefix}-{i}" for i in range(result["sent"])}
        assert not unknown, f"tokens nobody sent ran: {sorted(unknown)[:5]}"
        return {
            "published": result["sent"],
            "acknowledged": len(acked),
            "publishes_refused": result["failed"],
            "refusals": result["errors"],
            "longest_publish_gap_s": result["longest_publish_gap_s"],
            "longest_stall_s": round(stall, 2),
            "lost": len(acked - set(counts)),
            # when the lost ones were acknowledged to the producer (seconds since the epoch)
            "lost_acknowledged_at": sorted(when[t] for t in acked - set(counts)),
            "ran_twice": sum(1 for n in counts.values() if n > 1),
        }


def kill_primary_under_load(settle_s: float = 20) -> tuple[dict, bool]:
    """`docker kill` of the primary's VM under load: (figures, whether every worker, beat and
    Flower kept running without a restart). Leaves the killed VM stopped."""
    primary = primary_of_all(NODES)
    before = all_units()
    load = Load("kill")
    started, killed_at = time.monotonic(), time.time()
    subprocess.run(["docker", "kill", primary], check=True, capture_output=True)
    kill_s = round(time.time() - killed_at, 3)  # the VM died somewhere in this span
    survivors = [n for n in NODES if n != primary]
    if not wait_for(lambda: primary_of_all(survivors) in survivors, 60):
        docker_exec(PRODUCER, "touch", load.out + ".stop")
        raise AssertionError("no replica promoted")
    promoted_s = round(time.monotonic() - started, 1)
    time.sleep(settle_s)  # the load goes on through the new primary
    figures = {"killed": primary, "promoted_after_s": promoted_s, "kill_s": kill_s}
    figures.update(load.finish())
    # how long before `docker kill` was started the lost tasks were acknowledged (negative:
    # after it started; the VM died before it returned, kill_s after it started)
    figures["lost_acknowledged_s_before"] = [
        round(killed_at - at, 3) for at in figures.pop("lost_acknowledged_at")
    ]
    return figures, all_units() == before


def restart_lost_node() -> float:
    """`docker start` of the stopped broker VM; seconds until it replicates the new primary."""
    stopped = [n for n in NODES if not container_running(n)]
    if not stopped:
        return 0.0
    lost = stopped[0]
    started = time.monotonic()
    subprocess.run(["docker", "start", lost], check=True, capture_output=True)
    new = primary_of_all([n for n in NODES if n != lost])

    def synced() -> bool:
        try:  # (the VM's Redis does not answer while it boots)
            return in_sync(new, [n for n in NODES if n != new])
        except (AssertionError, subprocess.TimeoutExpired, KeyError):
            return False

    assert wait_for(synced, 120), f"{lost} did not come back as a replica of {new}"
    return round(time.monotonic() - started, 1)


def switchover_under_load() -> tuple[dict, bool]:
    """playbooks/switchover.yml under load: (figures, whether every worker, beat and Flower kept
    running without a restart)."""
    primary = primary_of_all(NODES)
    before = all_units()
    load = Load("switchover")
    try:
        proc, seconds = run_playbook("switchover.yml")
    except BaseException:
        docker_exec(PRODUCER, "touch", load.out + ".stop")  # no producer left behind
        raise
    new = primary_of_all(NODES)
    figures = {"from": primary, "to": new, "playbook_s": seconds, **load.finish()}
    figures.pop("lost_acknowledged_at")
    assert new != primary, proc.stdout[-3000:]
    return figures, all_units() == before
