#!/usr/bin/env python3
"""Benchmark: what Redis's `min-replicas-to-write` costs and buys a replicated broker (issue 22).

    .venv/bin/molecule converge -s sentinel   # the fleet, once (then: molecule destroy -s sentinel)
    .venv/bin/python tests/bench/min_replicas.py [--runs 3] [--max-lag 10] [--partition-s 30]

For each setting, `min-replicas-to-write` 0 (Redis's default, the toolkit's) and 1 (with
`min-replicas-max-lag` MAX_LAG), set live on the three nodes (CONFIG SET; put back to 0 at the
end), RUNS times:

- a client that keeps reaching the primary (a worker or producer on the primary's side of a
  network partition) LPUSHes a number every 20 ms on sentinel-worker-2, straight to the
  primary's address, and notes each acknowledged write and its latency;
- the primary's VM is cut off from the two other broker VMs (their Redis and sentinels) in both
  directions for PARTITION_S seconds (nftables in its network namespace), while its clients still
  reach it: the two sentinels promote a replica; then the cut is healed, the old primary becomes
  a replica of the new one, and the list is read back from the new primary.

Prints, per run: the write latency before the cut (p50 and p99 ms, `latency` being the cost per
write), seconds until a replica was promoted, writes the cut-off primary acknowledged after the
cut and how many of them the new primary lacks (lost), when it refused its first write
(NOREPLICAS) after the cut. Then, per setting, once: both replicas' Redis stopped for
PARTITION_S seconds with the primary healthy, and when (if ever) the primary refused writes: the
cost in availability.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("molecule/sentinel/tests", "molecule/resources", "plugins/filter")
sys.path[:0] = [str(ROOT / folder) for folder in FOLDERS]

from test_sentinel import ADMIN, NODES, cli, container_running, in_sync, primary_of_all  # noqa: E402

from playbook_runner import wait_for  # noqa: E402

CLIENT = "sentinel-worker-2"
PYTHON = "/opt/refapp/current/venv/bin/python"
# The client: redis-py of the app's release, one connection to HOST (never rediscovered), a
# LPUSH of the next number every 20 ms; notes acknowledged writes (number, time, latency) and
# refusals (time, first words of the error) until OUT.stop exists; writes OUT (JSON).
WRITER = r"""
import json, os, sys, time
import redis
host, user, password, key, out = sys.argv[1:6]
client = redis.Redis(host=host, port=6379, username=user, password=password,
                     socket_timeout=1, socket_connect_timeout=1, retry_on_timeout=False)
acked, refused, n = [], [], 0
while not os.path.exists(out + ".stop"):
    n += 1
    began = time.time()
    try:
        client.lpush(key, n)
        acked.append((n, time.time(), time.time() - began))
    except redis.RedisError as error:
        refused.append((time.time(), str(error)[:40]))
        time.sleep(0.2)
    time.sleep(0.02)
with open(out + ".tmp", "w") as handle:
    json.dump({"acked": acked, "refused": refused}, handle)
os.rename(out + ".tmp", out)
"""


def docker(*argv: str, check: bool = True) -> str:
    proc = subprocess.run(["docker", *argv], capture_output=True, text=True, timeout=120)
    if check and proc.returncode:
        raise SystemExit(f"docker {' '.join(argv)}: {proc.stdout}{proc.stderr}")
    return proc.stdout


class Client:
    def __init__(self, primary: str):
        self.key = f"min-replicas-{uuid.uuid4().hex[:8]}"
        self.out = f"/var/tmp/{self.key}.json"
        docker(
            "exec", "-d", CLIENT, PYTHON, "-c", WRITER, NODES[primary], *ADMIN, self.key, self.out
        )
        assert wait_for(lambda: self.stored(primary) > 50, 30), "the client never wrote"

    def stored(self, node: str) -> int:
        try:
            return int(cli(node, "LLEN", self.key)[0])
        except (AssertionError, ValueError, IndexError):
            return 0

    def stop(self) -> dict:
        docker("exec", CLIENT, "touch", self.out + ".stop")
        assert wait_for(
            lambda: (
                subprocess.run(["docker", "exec", CLIENT, "test", "-e", self.out]).returncode == 0
            ),
            30,
        ), "the client did not stop"
        return json.loads(docker("exec", CLIENT, "cat", self.out))


def nft_in(node: str, script: str) -> None:
    """An nftables script run in `node`'s network namespace (the VM has no nft of its own)."""
    pid = docker("inspect", "-f", "{{.State.Pid}}", node).strip()
    subprocess.run(
        ["nsenter", "-t", pid, "-n", "nft", "-f", "-"], input=script, text=True, check=True
    )


def cut_off(node: str) -> None:
    others = ", ".join(address for n, address in NODES.items() if n != node)
    nft_in(
        node,
        "table inet min_replicas_bench {\n"
        f"chain input {{ type filter hook input priority -10; ip saddr {{ {others} }} drop; }}\n"
        f"chain output {{ type filter hook output priority -10; ip daddr {{ {others} }} drop; }}\n"
        "}\n",
    )


def heal(node: str) -> None:
    nft_in(node, "delete table inet min_replicas_bench\n")


def set_min_replicas(count: int, max_lag: int) -> None:
    for node in NODES:
        for name, value in (("min-replicas-max-lag", max_lag), ("min-replicas-to-write", count)):
            assert cli(node, "CONFIG", "SET", name, str(value)) == ["OK"], node


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def partition_run(partition_s: float) -> dict:
    primary = primary_of_all(NODES)
    assert primary and in_sync(primary, [n for n in NODES if n != primary]), "fleet not in sync"
    client = Client(primary)
    time.sleep(5)  # latency before the cut
    cut_at = time.time()
    cut_off(primary)
    try:
        others = [n for n in NODES if n != primary]
        promoted = wait_for(lambda: primary_of_all(others) in others, 60)
        promoted_s = round(time.time() - cut_at, 1) if promoted else None
        time.sleep(max(0.0, partition_s - (time.time() - cut_at)))
    finally:
        heal(primary)
    healed_at = time.time()
    result = client.stop()
    # every sentinel, the cut-off node's too, names the promoted node, which has both replicas
    assert wait_for(lambda: primary_of_all(NODES) not in ("", primary), 60), "sentinels disagree"
    new = primary_of_all(NODES)
    assert wait_for(lambda: in_sync(new, [n for n in NODES if n != new]), 120), "no resync"
    stored = {int(v) for v in cli(new, "LRANGE", client.key, "0", "-1")}
    before = [latency for _, at, latency in result["acked"] if at < cut_at]
    after = [(n, at) for n, at, _ in result["acked"] if cut_at <= at < healed_at]
    refusals = [at for at, _ in result["refused"] if at >= cut_at]
    return {
        "from": primary,
        "to": new,
        "p50_ms": round(1000 * statistics.median(before), 2),
        "p99_ms": round(1000 * percentile(before, 0.99), 2),
        "promoted_s": promoted_s,
        "acked_cut_off": len(after),
        "lost": sum(1 for n, _ in after if n not in stored),
        "lost_before_cut": sum(
            1 for n, at, _ in result["acked"] if at < cut_at and n not in stored
        ),
        "refused_from_s": round(min(refusals) - cut_at, 1) if refusals else None,
        "last_ack_s": round(max(at for _, at in after) - cut_at, 1) if after else None,
        "errors": sorted({message for _, message in result["refused"]})[:2],
    }


def replicas_down_run(down_s: float) -> dict:
    primary = primary_of_all(NODES)
    replicas = [n for n in NODES if n != primary]
    client = Client(primary)
    stopped_at = time.time()
    for node in replicas:
        docker("exec", node, "systemctl", "stop", "redis-server")
    time.sleep(down_s)
    for node in replicas:
        docker("exec", node, "systemctl", "start", "redis-server")
    result = client.stop()
    assert wait_for(lambda: in_sync(primary, replicas), 120), "replicas did not come back"
    refusals = [at for at, _ in result["refused"] if at >= stopped_at]
    acked = [at for _, at, _ in result["acked"] if stopped_at <= at < stopped_at + down_s]
    return {
        "primary": primary,
        "acked_while_down": len(acked),
        "refused_from_s": round(min(refusals) - stopped_at, 1) if refusals else None,
        "refused": len(refusals),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-lag", type=int, default=10)
    parser.add_argument("--partition-s", type=float, default=30)
    args = parser.parse_args()
    # (no playbook runs here: the broker VMs are reached with docker exec and nsenter)
    if not all(container_running(node) for node in NODES):
        sys.exit("no converged sentinel scenario: run .venv/bin/molecule converge -s sentinel")
    try:
        for count in (0, 1):
            set_min_replicas(count, args.max_lag)
            for run in range(1, args.runs + 1):
                figures = partition_run(args.partition_s)
                print(json.dumps({"setting": count, "run": run, **figures}), flush=True)
                time.sleep(5)
            figures = replicas_down_run(args.partition_s)
            print(json.dumps({"setting": count, "replicas_down": figures}), flush=True)
    finally:
        set_min_replicas(0, 10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
