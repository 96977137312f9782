#!/usr/bin/env python3
"""Benchmark: Redis filled to maxmemory (noeviction) while workers consume: are messages lost,
and does RedisMemoryHigh fire before the first refused publish?

    scripts/demo                                   # the sandbox fleet with its monitor, once
    .venv/bin/python tests/bench/maxmemory.py [--maxmemory 8mb] [--fill-seconds 120]
        [--hold-seconds 30] [--runs 2] [--variants results ignore]
        [--json .cache/bench/maxmemory.json]

It deploys the sandbox with a small limit (deploy.yml -e redis_maxmemory=...), then for each
variant and run:
  - stops the slow group, so that `low` has no consumer (the incident: a queue nobody consumes);
  - a producer on the worker host (as the app) sends probe tasks carrying --pad bytes each to
    `low` at the rate that fills Redis's room in --fill-seconds, and --high-rate probe tasks a
    second to `high`, which the fast group consumes, for fill + hold seconds: Redis reaches
    maxmemory and refuses publishes (and every other write) from then on, while the fast group
    keeps popping `high`. Every publish is counted: attempted, refused (an error from Redis),
    accepted (its task id kept);
  - the operator's fix: the limit lifted (CONFIG SET maxmemory 0; kept with --no-lift: does the
    fleet come back below the limit by consuming alone?), the fast group restarted if it
    does not answer a ping, the slow group started; once `high` and `low` are empty, what a dead
    worker left in `unacked` is given back (recover.yml's helper); once `unacked` is empty too
    the limit is put back;
  - the workers' logs say which task ids ran: "lost" = accepted and never run (nothing is left
    in Redis by then); Redis's INFO errorstats the OOM and EXECABORT replies it sent; systemd
    the fast group's restarts; the monitor's Prometheus (query_range of ALERTS) when
    RedisMemoryHigh went pending and fired, against the producer's first refused publish.
Variants: `results` is the app as deployed (results and task_track_started in the broker's
Redis); `ignore` sends the same tasks with ignore_result=True (the workers write no results:
only kombu's own bookkeeping remains). The fleet is deployed again without the -e at the end.
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
from refapp.tasks.probe import probe
prefix, seconds, pad, ignore = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
rates = {"low": float(sys.argv[5]), "high": float(sys.argv[6])}
headers = {"bench_pad": "x" * pad}
options = {"ignore_result": True} if ignore else {}
out = {"attempted": 0, "accepted": [], "refused": 0, "errors": {}, "first_refusal": None,
       "last_accepted": None}
start = time.time()
sent = {queue: 0 for queue in rates}
while (now := time.time()) < start + seconds:
    due = [q for q, rate in rates.items() if sent[q] < rate * (now - start)]
    if not due:
        time.sleep(0.002)
        continue
    for queue in due:
        task_id = f"{prefix}-{queue}-{sent[queue]}"
        sent[queue] += 1
        out["attempted"] += 1
        try:
            probe.apply_async(
                args=[task_id], queue=queue, task_id=task_id, headers=headers, **options
            )
        except Exception as exc:  # Redis's OOM reply, at once (no retry: no connection error)
            out["refused"] += 1
            out["first_refusal"] = out["first_refusal"] or time.time()
            key = f"{type(exc).__name__}: {str(exc)[:90]}"
            out["errors"][key] = out["errors"].get(key, 0) + 1
        else:
            out["accepted"].append(task_id)
            out["last_accepted"] = time.time()
print(json.dumps(out))
"""

RECOVER = "/usr/local/lib/celery-toolkit/celery_recover.py"
PING = """
import sys
from refapp import app
try:
    print(bool(app.control.inspect(destination=[sys.argv[1]], timeout=5).ping()))
except Exception:  # a full broker refuses even the reply queue's declaration
    print(False)
"""

NOISE = re.compile(r"\[[^\]]*\]|[0-9a-f-]{36}|\d+\.\d+")  # times, ids: alike lines alike
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
        return run(
            ["docker", "exec", self.host, "refapp-run", "python", "-c", script, *args]
        ).stdout

    def as_app_file(self, path: str, *args: str) -> str:
        return run(["docker", "exec", self.host, "refapp-run", "python", path, *args]).stdout

    def unit(self, action: str, group: str) -> str:
        return run(
            ["docker", "exec", self.host, "systemctl", action, f"refapp-worker@{group}"]
        ).stdout

    def restarts(self, group: str) -> int:
        out = run(
            [
                "docker",
                "exec",
                self.host,
                "systemctl",
                "show",
                "-p",
                "NRestarts",
                "--value",
                f"refapp-worker@{group}",
            ]
        ).stdout
        return int(out.strip() or 0)

    def redis(self, *command: str, db: int = 0) -> str:
        """A command as Redis's administrator; the password in the environment, not on argv."""
        return run(
            [
                "docker",
                "exec",
                "-e",
                "REDISCLI_AUTH",
                self.broker,
                "redis-cli",
                "--user",
                "admin",
                "-n",
                str(db),
                "--no-auth-warning",
                *command,
            ],
            env={"REDISCLI_AUTH": self.password, "PATH": "/usr/bin:/bin"},
        ).stdout.strip()

    def info(self, section: str) -> dict[str, str]:
        pairs = (
            line.split(":", 1) for line in self.redis("INFO", section).splitlines() if ":" in line
        )
        return {k: v.strip() for k, v in pairs}

    def errorstats(self) -> dict[str, int]:
        return {
            key.removeprefix("errorstat_"): int(value.split("count=")[1].split(",")[0])
            for key, value in self.info("errorstats").items()
        }

    def pending(self) -> int:
        return sum(int(self.redis("LLEN", q)) for q in ("high", "low")) + int(
            self.redis("HLEN", "unacked")
        )

    def journal(self, since: float) -> str:
        return run(
            [
                "docker",
                "exec",
                self.host,
                "journalctl",
                "-o",
                "cat",
                "--no-pager",
                "--since",
                f"@{since:.0f}",
                "-t",
                "refapp-worker-fast",
                "-t",
                "refapp-worker-slow",
            ]
        ).stdout


class MemorySampler(threading.Thread):
    """used_memory every 0.5 s during the flood: the highest share of maxmemory."""

    def __init__(self, fleet: Fleet) -> None:
        super().__init__(daemon=True)
        self.fleet, self.stop, self.peak, self.limit = fleet, threading.Event(), 0, 0

    def run(self) -> None:
        while not self.stop.is_set():
            info = self.fleet.info("memory")
            self.peak = max(self.peak, int(info["used_memory"]))
            self.limit = max(self.limit, int(info["maxmemory"]))
            time.sleep(0.5)


def alert_times(prometheus: str, alert: str, start: float, end: float) -> dict[str, float | None]:
    """First time in [start, end] at which the alert was pending, and firing (query_range, 1 s)."""
    out = {}
    for state in ("pending", "firing"):
        query = urllib.parse.urlencode(
            {
                "query": f'ALERTS{{alertname="{alert}",alertstate="{state}"}}',
                "start": f"{start:.0f}",
                "end": f"{end:.0f}",
                "step": "1",
            }
        )
        with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{query}", timeout=10) as resp:
            result = json.load(resp)["data"]["result"]
        times = [float(t) for series in result for t, _ in series["values"]]
        out[state] = min(times) if times else None
    return out


def firing_now(prometheus: str, alert: str) -> bool:
    with urllib.request.urlopen(f"{prometheus}/api/v1/alerts", timeout=10) as resp:
        alerts = json.load(resp)["data"]["alerts"]
    return any(a["labels"].get("alertname") == alert for a in alerts)


def wait(predicate, timeout: float, step: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def one_run(fleet: Fleet, variant: str, args: argparse.Namespace, limit: int) -> dict:
    prefix = f"bench-oom-{uuid.uuid4().hex[:8]}"
    node = f"fast@{fleet.host}"
    if args.prometheus and not wait(lambda: not firing_now(args.prometheus, args.alert), 120, 5):
        sys.exit(f"{args.alert} still firing before the run")
    fleet.unit("stop", "slow")  # `low` has no consumer from now on
    before, restarts_before = fleet.errorstats(), fleet.restarts("fast")
    room = limit - int(fleet.info("memory")["used_memory"])
    # a message: its padding plus about 1.2 kB of Celery's envelope (LLEN against used_memory)
    fill_rate = room / ((args.pad + 1200) * args.fill_seconds)
    started = time.time()
    sampler = MemorySampler(fleet)
    sampler.start()
    out = fleet.as_app(
        PRODUCE,
        prefix,
        str(args.fill_seconds + args.hold_seconds),
        str(args.pad),
        "1" if variant == "ignore" else "0",
        f"{fill_rate:.3f}",
        str(args.high_rate),
    )
    sampler.stop.set()
    produced = json.loads(out.strip().splitlines()[-1])
    flood_end = time.time()
    restarts = fleet.restarts("fast") - restarts_before
    after = fleet.errorstats()
    alert = {}
    if args.prometheus:
        alert = alert_times(args.prometheus, args.alert, started - 30, flood_end)
    # the operator's fix (the alert's runbook): more room, a worker that answers, the consumer back;
    # with --no-lift the limit stays: the consumers alone must bring Redis back below it
    if not args.no_lift:
        fleet.redis("CONFIG", "SET", "maxmemory", "0")
    answered_after = fleet.as_app(PING, node).strip() == "True"
    if not answered_after:
        fleet.unit("restart", "fast")
    fleet.unit("start", "slow")
    queued = ("high", "low")
    wait(lambda: sum(int(fleet.redis("LLEN", q)) for q in queued) == 0, args.drain_timeout, 2)
    # a task a dead worker recorded in unacked stays there (its unit's recovery ran at OOM and was
    # refused): CeleryTasksStranded's runbook, playbooks/recover.yml, whose helper this is
    stranded = int(fleet.redis("HLEN", "unacked"))
    if stranded:
        time.sleep(
            10
        )  # tasks still running are not stranded: the helper leaves live workers' alone
        fleet.as_app_file(RECOVER, "--margin", "5")
    drained = wait(lambda: fleet.pending() == 0, args.drain_timeout, 2)
    time.sleep(5)  # the last tasks' log lines
    left = fleet.pending()
    journal = fleet.journal(started - 1)
    fleet.redis("CONFIG", "SET", "maxmemory", str(limit))
    outcome: dict[str, dict[str, int]] = {"succeeded": {}, "raised": {}, "received": {}}
    for task_id, what in TASK_LINE.findall(journal):
        if task_id.startswith(prefix):
            outcome[what][task_id] = outcome[what].get(task_id, 0) + 1
    accepted = set(produced["accepted"])
    succeeded = set(outcome["succeeded"])
    lost = accepted - succeeded
    errors = [line for line in journal.splitlines() if re.search(r"ERROR|CRITICAL", line)]
    first_refusal = produced["first_refusal"]
    result = {
        "variant": variant,
        "lifted": not args.no_lift,
        "attempted": produced["attempted"],
        "refused": produced["refused"],
        "accepted": len(accepted),
        "ran": len(succeeded & accepted),
        "ran_twice": sum(1 for n in outcome["succeeded"].values() if n > 1),
        "lost": len(lost) if drained else None,
        "lost_high": sum(1 for t in lost if "-high-" in t),
        "lost_never_received": len(lost - set(outcome["received"])),
        "lost_raised": len(lost & set(outcome["raised"])),
        "left_in_redis": left,
        "stranded_recovered": stranded,
        "oom_replies": after.get("OOM", 0) - before.get("OOM", 0),
        "execabort_replies": after.get("EXECABORT", 0) - before.get("EXECABORT", 0),
        "fast_restarts": restarts,
        "fast_answered_after_lift": answered_after,
        "unrecoverable_errors": journal.count("Unrecoverable error"),
        "peak_share": sampler.peak / limit,
        "fill_rate": fill_rate,
        "first_refusal_s": first_refusal - started if first_refusal else None,
        "alert_pending_s": alert["pending"] - started if alert.get("pending") else None,
        "alert_fired_s": alert["firing"] - started if alert.get("firing") else None,
        "worker_errors": len(errors),
        "error_samples": sorted({re.sub(NOISE, "..", e)[:150] for e in errors})[:6],
        "producer_errors": produced["errors"],
        "journal_suppressed": "Suppressed" in journal,
    }
    if result["alert_fired_s"] is not None and first_refusal:
        result["alert_lead_s"] = result["first_refusal_s"] - result["alert_fired_s"]
    keys = fleet.redis("--scan", "--pattern", f"celery-task-meta-{prefix}-*", db=1).split()
    for batch in range(0, len(keys), 500):  # one call per 500 keys: a docker exec is slow
        fleet.redis("UNLINK", *keys[batch : batch + 500], db=1)
    return result


def size(text: str) -> int:
    units = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "b": 1}
    match = re.fullmatch(r"(\d+)\s*(kb|mb|gb|b)?", text.lower())
    if not match:
        sys.exit(f"--maxmemory {text}: a size like 8mb")
    return int(match[1]) * units[match[2] or "b"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inventory", type=Path, default=ROOT / "inventories/sandbox")
    parser.add_argument("--host", default="celery-sandbox-1", help="the worker host (and producer)")
    parser.add_argument("--broker", default="celery-sandbox-1", help="the broker host")
    parser.add_argument("--maxmemory", default="8mb", help="redis_maxmemory for the benchmark")
    parser.add_argument("--fill-seconds", type=float, default=120, help="time to fill Redis's room")
    parser.add_argument("--hold-seconds", type=float, default=30, help="publishing on at maxmemory")
    parser.add_argument("--high-rate", type=float, default=20, help="tasks a second to 'high'")
    parser.add_argument("--pad", type=int, default=8192, help="bytes of padding per message")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["results", "ignore"])
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument(
        "--prometheus", default="http://172.30.79.20:9090", help="'' = no alert timing"
    )
    parser.add_argument("--alert", default="RedisMemoryHigh")
    parser.add_argument("--no-deploy", action="store_true", help="the fleet already has the limit")
    parser.add_argument(
        "--no-lift", action="store_true", help="keep the limit after the flood: consumers only"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    fleet = Fleet(args.inventory, args.host, args.broker)
    if not args.no_deploy:
        fleet.playbook("deploy.yml", "-e", f"redis_maxmemory={args.maxmemory}")
    limit = int(fleet.info("memory")["maxmemory"])
    if limit != size(args.maxmemory):
        sys.exit(f"Redis's maxmemory is {limit}, not {args.maxmemory}")
    results = []
    try:
        for variant in args.variants:
            for i in range(args.runs):
                results.append(one_run(fleet, variant, args, limit))
                print(f"  {variant} run {i + 1}: {json.dumps(results[-1])}", flush=True)
    finally:
        fleet.unit("start", "slow")
        if not args.no_deploy:
            fleet.playbook("deploy.yml")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print(
        f"\nRedis maxmemory {args.maxmemory} (noeviction); {args.pad} B probe tasks to 'low'"
        " (no consumer)"
        f" filling it in {args.fill_seconds:g} s, {args.high_rate:g}/s to 'high' (the fast group),"
        f" {args.hold_seconds:g} s more at the limit;"
        f" {'the limit kept' if args.no_lift else 'then the limit lifted'}"
    )
    head = (
        "variant",
        "attempted",
        "refused",
        "accepted",
        "ran",
        "lost",
        "OOM",
        "EXECABORT",
        "restarts",
        "peak",
        "pending s",
        "fired s",
        "refused s",
    )
    print("".join(f"{h:>10}" if i else f"{h:<8}" for i, h in enumerate(head)))

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f}"

    for r in results:
        row = (
            r["variant"],
            r["attempted"],
            r["refused"],
            r["accepted"],
            r["ran"],
            "?" if r["lost"] is None else r["lost"],
            r["oom_replies"],
            r["execabort_replies"],
            r["fast_restarts"],
            f"{r['peak_share']:.0%}",
            secs(r["alert_pending_s"]),
            secs(r["alert_fired_s"]),
            secs(r["first_refusal_s"]),
        )
        print("".join(f"{v!s:>10}" if i else f"{v!s:<8}" for i, v in enumerate(row)))
    print(
        "(pending s, fired s, refused s: RedisMemoryHigh pending, firing, and the first refused"
        " publish, seconds after the producer started)"
    )
    for r in results:
        for sample in r["error_samples"]:
            print(f"  {r['variant']}: worker log: {sample}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
