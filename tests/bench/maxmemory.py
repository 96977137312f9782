#!/usr/bin/env python3
"""Benchmark: Redis filled to maxmemory (noeviction) while workers consume; are messages lost?

    scripts/demo                                   # the sandbox fleet, once
    .venv/bin/python tests/bench/maxmemory.py [--maxmemory 8mb] [--seconds 20] [--runs 2]

It deploys the sandbox with a small redis_maxmemory (deploy.yml -e redis_maxmemory=...), then,
for each variant and run, a producer on the worker host publishes probe tasks to `high` (each
carrying a header of --pad bytes) as fast as it can for --seconds while the fast group consumes
them; Redis is full within a second and from then on refuses publishes, and the workers' own
writes, whenever used memory is above the limit. The producer counts publishes attempted,
refused (an error from Redis) and accepted (their task ids). After the flood the script waits
until `high` and `unacked` hold nothing of the run, then reads the workers' logs: every accepted
task id should be logged as succeeded exactly once. "lost" = accepted, never run, and in no Redis
list or hash any more. It also reads Redis's error counters (INFO errorstats: OOM and EXECABORT
replies) and, with --monitor, the time the RedisMemoryHigh alert fired on the monitor host's
Prometheus against the time of the first refused publish. Variants:
  results   the app as deployed: results (and task_track_started) in the broker's Redis
  ignore    the same tasks sent with ignore_result=True: no result writes by the workers
The fleet is deployed again without the -e at the end (redis_maxmemory from the inventory).
Prints the runs side by side.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"

# Runs on the worker host as the app (refapp-run python -c ...): publish for SECONDS, print JSON.
PRODUCE = r"""
import json, sys, time
from refapp import app
from refapp.tasks.probe import probe
prefix, seconds, pad, ignore = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
headers = {"bench_pad": "x" * pad}
accepted, refused, errors, first_refusal, last_refusal = [], 0, {}, None, None
options = {"ignore_result": True} if ignore else {}
end = time.time() + seconds
i = 0
while time.time() < end:
    task_id = f"{prefix}-{i}"
    i += 1
    try:
        probe.apply_async(args=[task_id], queue="high", task_id=task_id, headers=headers, **options)
    except Exception as exc:  # Redis's OOM reply, raised by kombu (no retry: not a connection error)
        refused += 1
        now = time.time()
        first_refusal = first_refusal or now
        last_refusal = now
        key = f"{type(exc).__name__}: {str(exc)[:80]}"
        errors[key] = errors.get(key, 0) + 1
        time.sleep(0.001)
    else:
        accepted.append(task_id)
print(json.dumps({"attempted": i, "accepted": accepted, "refused": refused, "errors": errors,
                  "first_refusal": first_refusal, "last_refusal": last_refusal}))
"""

TASK_LINE = re.compile(r"Task refapp\.tasks\.probe\.probe\[([^\]]+)\] (succeeded|raised|received)")


def run(args: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, **kwargs)
    if check and proc.returncode != 0:
        sys.exit(f"{' '.join(args[:5])} failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return proc


class Fleet:
    def __init__(self, inventory: Path, host: str, broker: str) -> None:
        self.inventory, self.host, self.broker = inventory, host, broker
        group_vars = yaml.safe_load((inventory / "group_vars/all.yml").read_text())
        self.password = group_vars["redis_password"]

    def playbook(self, book: str, *extra: str) -> None:
        run([str(BIN / "ansible-playbook"), "-i", str(self.inventory), f"playbooks/{book}", *extra])

    def as_app(self, script: str, *args: str) -> str:
        return run(["docker", "exec", self.host, "refapp-run", "python", "-c", script, *args]).stdout

    def redis(self, *command: str, db: int = 0) -> str:
        """A command as Redis's administrator; the password in the environment, not on argv."""
        return run(
            ["docker", "exec", "-e", "REDISCLI_AUTH", self.broker, "redis-cli", "--user", "admin",
             "-n", str(db), "--no-auth-warning", *command],
            env={"REDISCLI_AUTH": self.password, "PATH": "/usr/bin:/bin"},
        ).stdout.strip()

    def info(self, section: str) -> dict[str, str]:
        pairs = (line.split(":", 1) for line in self.redis("INFO", section).splitlines() if ":" in line)
        return {k: v.strip() for k, v in pairs}

    def errorstats(self) -> dict[str, int]:
        out = {}
        for key, value in self.info("errorstats").items():
            out[key.removeprefix("errorstat_")] = int(value.split("count=")[1].split(",")[0])
        return out

    def journal(self, since: float) -> str:
        return run(
            ["docker", "exec", self.host, "journalctl", "-o", "cat", "--no-pager", "--since",
             f"@{since:.0f}", "-t", "refapp-worker-fast", "-t", "refapp-worker-slow"]
        ).stdout


class MemorySampler(threading.Thread):
    """used_memory every 0.25 s during the flood: the highest share of maxmemory."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(daemon=True)
        self.fleet, self.stop, self.peak, self.limit = fleet, threading.Event(), 0, 0

    def run(self) -> None:
        while not self.stop.is_set():
            info = self.fleet.info("memory")
            self.peak = max(self.peak, int(info["used_memory"]))
            self.limit = int(info["maxmemory"])
            time.sleep(0.25)


def alert_fired_at(prometheus: str, alert: str, start: float, end: float) -> float | None:
    """First time in [start, end] at which ALERTS{alertname=alert, alertstate="firing"} was 1."""
    query = urllib.parse.urlencode(
        {"query": f'ALERTS{{alertname="{alert}",alertstate="firing"}}', "start": start,
         "end": end, "step": 1}
    )
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{query}", timeout=10) as resp:
        result = json.load(resp)["data"]["result"]
    times = [float(t) for series in result for t, _ in series["values"]]
    return min(times) if times else None


def wait(predicate, timeout: float, step: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def one_run(fleet: Fleet, variant: str, args: argparse.Namespace) -> dict:
    prefix = f"bench-oom-{uuid.uuid4().hex[:8]}"
    before = fleet.errorstats()
    since = time.time() - 1
    sampler = MemorySampler(fleet)
    sampler.start()
    out = fleet.as_app(PRODUCE, prefix, str(args.seconds), str(args.pad), "1" if variant == "ignore" else "0")
    sampler.stop.set()
    produced = json.loads(out.strip().splitlines()[-1])
    flood_end = time.time()

    def ours_pending() -> int:
        queued = int(fleet.redis("LLEN", "high"))
        unacked = [k for k in fleet.redis("HKEYS", "unacked").splitlines() if k]
        return queued + len(unacked)

    drained = wait(lambda: ours_pending() == 0, args.drain_timeout)
    time.sleep(5)  # the last tasks' log lines
    journal = fleet.journal(since)
    outcome: dict[str, dict[str, int]] = {"succeeded": {}, "raised": {}, "received": {}}
    for task_id, what in TASK_LINE.findall(journal):
        if task_id.startswith(prefix):
            outcome[what][task_id] = outcome[what].get(task_id, 0) + 1
    accepted = set(produced["accepted"])
    succeeded = set(outcome["succeeded"])
    left = ours_pending()
    errors = [line for line in journal.splitlines() if re.search(r"ERROR|CRITICAL|Traceback", line)]
    after = fleet.errorstats()
    result = {
        "variant": variant,
        "attempted": produced["attempted"],
        "accepted": len(accepted),
        "refused": produced["refused"],
        "ran": len(succeeded & accepted),
        "ran_twice": sum(1 for n in outcome["succeeded"].values() if n > 1),
        "raised": len(set(outcome["raised"]) - succeeded),
        "never_received": len(accepted - set(outcome["received"])),
        "lost": len(accepted - succeeded) if drained else None,
        "left_in_redis": left,
        "oom_replies": after.get("OOM", 0) - before.get("OOM", 0),
        "execabort_replies": after.get("EXECABORT", 0) - before.get("EXECABORT", 0),
        "peak_share": sampler.peak / sampler.limit if sampler.limit else 0,
        "worker_errors": len(errors),
        "error_samples": sorted({re.sub(r"\[[^\]]*\]", "[..]", e)[:160] for e in errors})[:4],
        "producer_errors": produced["errors"],
        "journal_suppressed": "Suppressed" in journal,
        "first_refusal": produced["first_refusal"],
        "flood_start": since + 1,
        "flood_end": flood_end,
    }
    if args.prometheus and produced["first_refusal"]:
        fired = alert_fired_at(args.prometheus, args.alert, since - 60, time.time())
        result["alert_fired"] = fired
        result["alert_lead_s"] = produced["first_refusal"] - fired if fired else None
    # the run's results (db 1) would fill the small Redis of the next run
    for key in fleet.redis("--scan", "--pattern", f"celery-task-meta-{prefix}-*", db=1).splitlines():
        fleet.redis("UNLINK", key, db=1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", type=Path, default=ROOT / "inventories/sandbox")
    parser.add_argument("--host", default="celery-sandbox-1", help="a worker host (the producer)")
    parser.add_argument("--broker", default="celery-sandbox-1", help="the broker host")
    parser.add_argument("--maxmemory", default="8mb", help="redis_maxmemory for the benchmark")
    parser.add_argument("--seconds", type=float, default=20, help="how long the producer publishes")
    parser.add_argument("--pad", type=int, default=8192, help="bytes of padding per message")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["results", "ignore"])
    parser.add_argument("--drain-timeout", type=float, default=180)
    parser.add_argument("--prometheus", default="", help="URL of the monitor's Prometheus")
    parser.add_argument("--alert", default="RedisMemoryHigh")
    parser.add_argument("--no-deploy", action="store_true", help="the fleet already has the limit")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    fleet = Fleet(args.inventory, args.host, args.broker)
    if not args.no_deploy:
        fleet.playbook("deploy.yml", "-e", f"redis_maxmemory={args.maxmemory}")
    results = []
    try:
        for variant in args.variants:
            for i in range(args.runs):
                results.append(one_run(fleet, variant, args))
                print(f"  {variant} run {i + 1}: {json.dumps(results[-1])}", flush=True)
    finally:
        if not args.no_deploy:
            fleet.playbook("deploy.yml")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print(
        f"\nRedis maxmemory {args.maxmemory} (noeviction), producer publishing {args.seconds:g} s of "
        f"probe tasks ({args.pad} B each) to 'high' while the fast group consumes"
    )
    head = ("variant", "attempted", "refused", "accepted", "ran", "lost", "raised", "twice", "OOM",
            "EXECABORT", "peak", "alert lead s")
    print("".join(f"{h:>11}" if i else f"{h:<9}" for i, h in enumerate(head)))
    for r in results:
        lead = r.get("alert_lead_s")
        row = (r["variant"], r["attempted"], r["refused"], r["accepted"], r["ran"],
               "?" if r["lost"] is None else r["lost"], r["raised"], r["ran_twice"], r["oom_replies"],
               r["execabort_replies"], f"{r['peak_share']:.0%}", "-" if lead is None else f"{lead:.0f}")
        print("".join(f"{v!s:>11}" if i else f"{v!s:<9}" for i, v in enumerate(row)))
    for r in results:
        for sample in r["error_samples"]:
            print(f"  {r['variant']}: worker log: {sample}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
