"""A replicated broker as its operator sees it: one primary and two replicas in sync, three
sentinels that agree, a primary lost with its VM and replaced within 30 s, the lost VM back as a
replica, deploys after a failover that restart nothing, and a change that rolls the nodes with a
switchover that loses no write.

Tests run in file order on one converged fleet (molecule.yml). The clients here are the system
Python on a broker VM (writer.py): the nodes admit only each other (redis_firewall_enabled).
"""

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from celery_quote import redis_config_quote as quote
from playbook_runner import play_recap, record_figure, run_playbook, wait_for

NODES = {f"sentinel-broker-{n}": f"172.30.80.{10 + n}" for n in (1, 2, 3)}
BY_ADDRESS = {address: node for node, address in NODES.items()}
ADMIN = ("admin", "sentinel-scenario-admin-password-01")
SENTINEL_PASSWORD = "sentinel-scenario-$(pw)&#02"
NODE_USER = ("sentinel", "sentinel-scenario-node-password-03")
REPLICATION = ("replica", "replica scenario & pw #04")
WRITER = Path(__file__).with_name("writer.py")
RUN = uuid.uuid4().hex[:8]
FIGURES = "sentinel-figures.json"


def cli(node: str, *command: str, login=ADMIN, port: int = 6379) -> list[str]:
    """One command through redis-cli on `node` over loopback, AUTH first on stdin (`login` a
    (user, password) pair, a password alone, or None); the reply's lines after AUTH's."""
    auth = []
    if login is not None:
        words = login if isinstance(login, tuple) else (login,)
        auth = ["AUTH " + " ".join(quote(w) for w in words)]
    script = "\n".join([*auth, " ".join(quote(w) for w in command)]) + "\n"
    proc = subprocess.run(
        ["docker", "exec", "-i", node, "redis-cli", "-h", "127.0.0.1", "-p", str(port)],
        input=script,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = proc.stdout.splitlines()
    if auth:
        assert lines and lines[0] == "OK", f"AUTH on {node}:{port}: {proc.stdout}{proc.stderr}"
        return lines[1:]
    return lines


def sentinel(node: str, *command: str) -> list[str]:
    return cli(node, "SENTINEL", *command, login=SENTINEL_PASSWORD, port=26379)


def named_primary(node: str) -> str:
    """The node `node`'s sentinel names as the primary ("" when it names none)."""
    try:
        reply = sentinel(node, "GET-MASTER-ADDR-BY-NAME", "celery")
    except (AssertionError, subprocess.TimeoutExpired):
        return ""
    return BY_ADDRESS.get(reply[0], reply[0]) if reply else ""


def fields(lines: list[str]) -> dict[str, str]:
    return dict(zip(lines[::2], lines[1::2], strict=False))


def replication(node: str) -> dict[str, str]:
    lines = cli(node, "INFO", "replication")
    return dict(line.split(":", 1) for line in lines if ":" in line)


def server(node: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in cli(node, "INFO", "server") if ":" in line)


def run_id(node: str) -> str:
    return server(node)["run_id"]


def primary_of_all(nodes) -> str:
    """The one node every sentinel of `nodes` names, else ""."""
    named = {named_primary(n) for n in nodes}
    return named.pop() if len(named) == 1 else ""


def in_sync(primary: str, replicas) -> bool:
    info = replication(primary)
    up = [r for r in replicas if replication(r).get("master_link_status") == "up"]
    return (
        info.get("role") == "master"
        and info.get("connected_slaves") == str(len(replicas))
        and (len(up) == len(replicas))
    )


class Writer:
    """writer.py on a broker VM that is not `avoid`, in the background."""

    def __init__(self, avoid: str, name: str):
        self.node = next(n for n in NODES if n != avoid)
        self.key, self.out = f"writes-{name}-{RUN}", f"/tmp/writer-{name}-{RUN}.json"
        # (on the VM's disk: `docker cp` cannot write into its /tmp, a tmpfs)
        subprocess.run(
            ["docker", "exec", "-i", self.node, "sh", "-c", "cat > /root/writer.py"],
            input=WRITER.read_text(),
            text=True,
            check=True,
        )
        subprocess.run(
            ["docker", "exec", "-d", self.node, "python3", "/root/writer.py", self.key, self.out],
            check=True,
        )
        assert wait_for(lambda: self.stored_count() > 20, 30), "the writer never wrote"

    def stored_count(self) -> int:
        primary = primary_of_all(NODES) or next(iter(NODES))
        try:
            return int(cli(primary, "LLEN", self.key)[0])
        except (AssertionError, ValueError, IndexError):
            return 0

    def stop(self) -> dict:
        time.sleep(2)
        subprocess.run(["docker", "exec", self.node, "touch", self.out + ".stop"], check=True)
        assert wait_for(
            lambda: (
                subprocess.run(["docker", "exec", self.node, "test", "-e", self.out]).returncode
                == 0
            ),
            30,
        )
        result = json.loads(
            subprocess.run(
                ["docker", "exec", self.node, "cat", self.out], capture_output=True, text=True
            ).stdout
        )
        primary = primary_of_all(n for n in NODES if container_running(n))
        stored = {int(v) for v in cli(primary, "LRANGE", self.key, "0", "-1")}
        acked = set(result["acked"])
        return {
            "sent": result["sent"],
            "acknowledged": len(acked),
            "acknowledged_then_lost": len(acked - stored),
            "longest_gap_s": round(result["longest_gap_s"], 2),
        }


def container_running(node: str) -> bool:
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Running}}", node], capture_output=True, text=True
    )
    return out.stdout.strip() == "true"


def test_one_primary_and_two_replicas_in_sync():
    assert replication("sentinel-broker-1")["role"] == "master"
    assert in_sync("sentinel-broker-1", ["sentinel-broker-2", "sentinel-broker-3"])
    for node in ("sentinel-broker-2", "sentinel-broker-3"):
        info = replication(node)
        assert (info["role"], info["master_host"]) == ("slave", NODES["sentinel-broker-1"])


def test_every_sentinel_names_the_primary_and_knows_the_others():
    for node in NODES:
        master = fields(sentinel(node, "MASTER", "celery"))
        assert master["ip"] == NODES["sentinel-broker-1"]
        assert (master["num-slaves"], master["num-other-sentinels"], master["quorum"]) == (
            "2",
            "2",
            "2",
        ), f"{node}: {master}"
        assert "down" not in master["flags"]


def test_a_write_reaches_both_replicas_and_replicas_refuse_writes():
    cli("sentinel-broker-1", "SET", f"probe-{RUN}", "x")
    assert cli("sentinel-broker-1", "WAIT", "2", "2000") == ["2"]
    for node in ("sentinel-broker-2", "sentinel-broker-3"):
        assert cli(node, "GET", f"probe-{RUN}") == ["x"]
        assert cli(node, "SET", f"probe-{RUN}", "y")[0].startswith("READONLY")


def test_sentinels_and_the_nodes_users_are_locked_down():
    """No sentinel answers without its password; the replicas' and the sentinels' users of the
    nodes can do their job only (no reading or deleting the queues)."""
    assert "NOAUTH" in " ".join(
        cli("sentinel-broker-2", "SENTINEL", "MASTERS", login=None, port=26379)
    )
    assert cli("sentinel-broker-1", "GET", f"probe-{RUN}", login=REPLICATION)[0].startswith(
        "NOPERM"
    )
    assert cli("sentinel-broker-1", "FLUSHALL", login=NODE_USER)[0].startswith("NOPERM")
    assert cli("sentinel-broker-1", "ROLE", login=NODE_USER)[0] == "master"


def test_config_rewrite_cannot_change_the_toolkits_configuration():
    """Sentinel sends CONFIG REWRITE with every REPLICAOF: it must fail, so that a deploy after a
    failover finds redis.conf as it wrote it (and restarts nothing)."""

    def checksum() -> str:
        return subprocess.run(
            ["docker", "exec", "sentinel-broker-2", "sha256sum", "/etc/redis/redis.conf"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    before = checksum()
    reply = cli("sentinel-broker-2", "CONFIG", "REWRITE")
    assert "Read-only file system" in reply[0]
    after = checksum()
    assert before == after


def test_losing_the_primarys_vm_promotes_a_replica_within_30_s():
    writer = Writer(avoid="sentinel-broker-1", name="kill")
    started = time.monotonic()
    subprocess.run(["docker", "kill", "sentinel-broker-1"], check=True, capture_output=True)
    survivors = ["sentinel-broker-2", "sentinel-broker-3"]
    assert wait_for(lambda: primary_of_all(survivors) in survivors, 60), "no replica promoted"
    promoted_s = round(time.monotonic() - started, 1)
    new = primary_of_all(survivors)
    assert wait_for(lambda: in_sync(new, [n for n in survivors if n != new]), 30)
    figures = writer.stop()
    record_figure(FIGURES, "primary killed", {"promoted_after_s": promoted_s, **figures})
    print(f"primary killed: {new} promoted after {promoted_s} s; writes: {figures}")
    assert promoted_s < 30
    # the writer went on through the sentinels: its longest wait is the failover's
    assert figures["longest_gap_s"] < 30
    assert cli(new, "GET", f"probe-{RUN}") == ["x"], "a write replicated before the loss is gone"
    # the lost VM held the first sentinel of the app's URLs, the one Flower's Broker page asks
    assert wait_for(lambda: flower_queues()[0] >= {"high", "default", "low"}, 30), flower_queues()


def flower_queues() -> tuple[set[str], str]:
    """The queues Flower's /api/queues/length counts (its own Redis client, not kombu's), and
    what it said."""
    proc = subprocess.run(
        ["docker", "exec", "sentinel-worker-1", "curl", "-s", "--max-time", "20", "-u",
         "admin:sentinel-scenario-flower-password", "http://127.0.0.1:5555/api/queues/length"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        return {queue["name"] for queue in json.loads(proc.stdout)["active_queues"]}, proc.stdout
    except (ValueError, KeyError, TypeError):
        return set(), proc.stdout[-500:] + proc.stderr[-500:]


def test_the_lost_vm_comes_back_as_a_replica_of_the_new_primary():
    new = primary_of_all(["sentinel-broker-2", "sentinel-broker-3"])
    started = time.monotonic()
    subprocess.run(["docker", "start", "sentinel-broker-1"], check=True, capture_output=True)

    def replicates_new() -> bool:
        try:  # (Redis is not up yet while the VM boots)
            info = replication("sentinel-broker-1")
        except (AssertionError, subprocess.TimeoutExpired):
            return False
        return (info.get("master_host"), info.get("master_link_status")) == (NODES[new], "up")

    assert wait_for(replicates_new, 90), "the old primary did not become a replica of the new one"
    record_figure(
        FIGURES, "old primary back as a replica after_s", round(time.monotonic() - started, 1)
    )
    assert wait_for(lambda: primary_of_all(NODES) == new, 30)
    assert in_sync(new, [n for n in NODES if n != new])


def test_a_deploy_after_the_failover_keeps_the_primary_and_restarts_nothing():
    primary = primary_of_all(NODES)
    before = {node: run_id(node) for node in NODES}
    run_playbook("broker.yml")
    proc, _ = run_playbook("broker.yml")
    assert all(c["changed"] == 0 for c in play_recap(proc.stdout).values()), proc.stdout[-3000:]
    assert {node: run_id(node) for node in NODES} == before
    assert primary_of_all(NODES) == primary
    # each replica's replication.conf now names the new primary (for its next start)
    for node in NODES:
        conf = subprocess.run(
            ["docker", "exec", node, "cat", "/etc/redis/replication.conf"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert (f"replicaof {NODES[primary]} 6379" in conf) == (node != primary), conf


def test_a_change_rolls_the_replicas_then_switches_the_primary_over_losing_no_write():
    primary = primary_of_all(NODES)
    before = {node: run_id(node) for node in NODES}
    writer = Writer(avoid=primary, name="rolling")
    proc, seconds = run_playbook("broker.yml", "-e", '{"redis_tcp_keepalive": 301}')
    figures = writer.stop()
    record_figure(FIGURES, "rolling change", {"deploy_s": seconds, **figures})
    print(f"rolling change in {seconds} s; writes: {figures}")
    after = {node: run_id(node) for node in NODES}
    assert all(after[n] != before[n] for n in NODES), "a node was not restarted"
    new = primary_of_all(NODES)
    assert new != primary, "the primary was restarted without a switchover"
    assert "Switch the primary over to a replica in sync" in proc.stdout
    assert in_sync(new, [n for n in NODES if n != new])
    assert figures["acknowledged_then_lost"] == 0
    # the replicas went first: the old primary restarted last (it has run the shortest time)
    uptime = {node: int(server(node)["uptime_in_seconds"]) for node in NODES}
    assert all(uptime[primary] <= uptime[n] for n in NODES), uptime


@pytest.fixture(autouse=True, scope="module")
def _fleet_back_up():
    """A test that stops half-way must not leave a VM stopped for the next ones."""
    yield
    for node in NODES:
        if not container_running(node):
            subprocess.run(["docker", "start", node], capture_output=True)
