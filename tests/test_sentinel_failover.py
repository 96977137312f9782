"""A worker started by the launcher (roles/celery_app/files/celery_launch.py) against a broker
behind Redis Sentinel (issue 22), on this machine's redis-server: a primary, a replica and three
sentinels, ACL users as the toolkit makes them, the sentinels behind their own password.

The app knows nothing of Sentinel (an app the toolkit has never seen): the broker and the result
backend reach it as `sentinel://` URLs in CELERY_BROKER_URL and CELERY_RESULT_BACKEND, the primary's
name and the sentinels' password as JSON in the launcher's variables. Under a steady stream of
tasks, a planned switchover (SENTINEL FAILOVER) loses none and runs none twice; after the
primary's death (SIGKILL) the worker consumes again without a restart, and the old primary comes
back as a replica. What the death cost (tasks lost, run twice, seconds without consuming) is
printed: the replicated fleet's benchmark (tests/bench/) is where it is measured ten times.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

FILES = Path(__file__).resolve().parent.parent / "roles/celery_app/files"
LAUNCH = FILES / "celery_launch.py"
MASTER = "toolkit-broker"
ADMIN_PASSWORD = "admin-pw"
SENTINEL_PASSWORD = "sentinel-pw"
# an app password holding what a shell or a URL would misread (':' is the URL's own separator)
APP_PASSWORD = "app$(pw)&#x"

# An app of the shape the toolkit is judged on: one module, Celery's default queue, no settings
APP = """
import os
from celery import Celery

app = Celery("shapeapp")
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 1


@app.task
def record(n):
    with open(os.environ["LEDGER"], "a") as ledger:
        ledger.write(f"{n}\\n")
    return n
"""

# Publishes tasks until the stop file appears; prints the numbers it was told were sent
PRODUCER = """
import json, os, sys, time
import celery_launch
celery_launch.configure()
from shapeapp import record
sent, refused, n = [], 0, 0
while not os.path.exists(sys.argv[1]):
    try:
        record.apply_async((n,), retry=True, retry_policy={"max_retries": 30, "interval_start": 0.2,
                                                           "interval_step": 0.2, "interval_max": 1})
        sent.append(n)
    except Exception:
        refused += 1
    n += 1
    time.sleep(0.02)
# the result backend through the sentinels as well: a task's return value, read back
result = record.delay(-1).get(timeout=60)
print(json.dumps({"sent": sent, "refused": refused, "result": result}))
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check, seconds: float = 30.0, step: float = 0.1):
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = check()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(step)


class Fleet:
    """A primary, a replica and three sentinels, each a process of this test (stopped by pid)."""

    def __init__(self, folder: Path):
        server = shutil.which("redis-server")
        if not server:
            pytest.fail("redis-server is missing: apt-get install redis-server; .ci/run does")
        self.server, self.folder, self.procs = server, folder, {}
        self.nodes = [free_port(), free_port()]
        self.sentinels = [free_port() for _ in range(3)]

    def node_conf(self, port: int, replica_of: int | None) -> Path:
        conf = self.folder / f"node-{port}.conf"
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {self.folder}",
            'save ""',
            "appendonly no",
            "maxmemory-policy noeviction",
            "user default off",
            f"user admin on >{ADMIN_PASSWORD} ~* &* +@all",
            f"user app on >{APP_PASSWORD} ~* &* +@all",
            "masteruser admin",
            f"masterauth {ADMIN_PASSWORD}",
        ]
        if replica_of:
            lines.append(f"replicaof 127.0.0.1 {replica_of}")
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start_node(self, port: int, replica_of: int | None = None) -> None:
        conf = self.folder / f"node-{port}.conf"
        if not conf.exists():
            self.node_conf(port, replica_of)
        self.procs[port] = subprocess.Popen([self.server, str(conf)], stdout=subprocess.DEVNULL)
        wait_for(f"redis {port} answers", lambda: self.admin(port).ping())

    def start(self) -> None:
        primary, replica = self.nodes
        self.start_node(primary)
        self.start_node(replica, replica_of=primary)
        wait_for(
            "the replica in sync",
            lambda: self.admin(replica).info("replication")["master_link_status"] == "up",
        )
        for port in self.sentinels:
            conf = self.folder / f"sentinel-{port}.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        f"dir {self.folder}",
                        f"requirepass {SENTINEL_PASSWORD}",
                        f"sentinel monitor {MASTER} 127.0.0.1 {primary} 2",
                        f"sentinel auth-user {MASTER} admin",
                        f"sentinel auth-pass {MASTER} {ADMIN_PASSWORD}",
                        f"sentinel down-after-milliseconds {MASTER} 2000",
                        f"sentinel failover-timeout {MASTER} 10000",
                    ]
                )
                + "\n"
            )
            self.procs[port] = subprocess.Popen(
                [self.server, str(conf), "--sentinel"], stdout=subprocess.DEVNULL
            )
        for port in self.sentinels:
            wait_for(
                f"sentinel {port} knows the replica and the other sentinels",
                lambda port=port: (
                    len(self.sentinel(port).sentinel_slaves(MASTER)) == 1
                    and len(self.sentinel(port).sentinel_sentinels(MASTER)) == 2
                ),
            )

    def admin(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, username="admin", password=ADMIN_PASSWORD, socket_timeout=2)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=SENTINEL_PASSWORD, socket_timeout=2)

    def primary(self) -> int:
        return int(self.sentinel(self.sentinels[0]).sentinel_get_master_addr_by_name(MASTER)[1])

    def url(self, db: int) -> str:
        # the password percent-encoded, as the toolkit writes it (kombu unquotes it)
        from urllib.parse import quote

        return ";".join(
            f"sentinel://app:{quote(APP_PASSWORD, safe='')}@127.0.0.1:{port}/{db}"
            for port in self.sentinels
        )

    def env(self, ledger: Path, app_dir: Path) -> dict[str, str]:
        options = json.dumps(
            {"master_name": MASTER, "sentinel_kwargs": {"password": SENTINEL_PASSWORD}}
        )
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(FILES), str(app_dir)]),
            "CELERY_BROKER_URL": self.url(0),
            "CELERY_RESULT_BACKEND": self.url(1),
            "CELERY_TOOLKIT_BROKER_TRANSPORT_OPTIONS": options,
            "CELERY_TOOLKIT_RESULT_BACKEND_TRANSPORT_OPTIONS": options,
            "LEDGER": str(ledger),
        }

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture
def worker(fleet, tmp_path):
    """The launcher's worker on the fleet; yields (env, ledger path, the worker process)."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "shapeapp.py").write_text(APP)
    ledger = tmp_path / "ledger"
    ledger.touch()
    env = fleet.env(ledger, app_dir)
    with open(tmp_path / "worker.log", "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(LAUNCH),
                "-A",
                "shapeapp",
                "worker",
                "--pool=prefork",
                "--concurrency=2",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=INFO",
            ],
            env=env,
            cwd=app_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield env, ledger, proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def ran(ledger: Path) -> list[int]:
    return [int(line) for line in ledger.read_text().split()]


class Producer:
    def __init__(self, env: dict, folder: Path):
        self.stop_file = folder / "stop-producing"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(self.stop_file)],
            env=env,
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def finish(self) -> dict:
        self.stop_file.touch()
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err[-3000:]
        return json.loads(out.splitlines()[-1])


@pytest.fixture
def loaded(fleet, worker, tmp_path):
    """Tasks flowing, the first 20 run; yields (ledger, worker, primary port, producer)."""
    env, ledger, proc = worker
    old = fleet.primary()
    producer = Producer(env, tmp_path)
    wait_for("the worker runs the first tasks", lambda: len(ran(ledger)) >= 20)
    return ledger, proc, old, producer


def test_a_planned_switchover_under_load_loses_nothing_and_runs_nothing_twice(fleet, loaded):
    ledger, proc, old, producer = loaded
    fleet.sentinel(fleet.sentinels[0]).execute_command("SENTINEL", "FAILOVER", MASTER)
    new = wait_for("a replica promoted", lambda: fleet.primary() != old and fleet.primary())
    before = len(ran(ledger))
    wait_for("the worker consumes from the new primary", lambda: len(ran(ledger)) >= before + 20)
    out = producer.finish()
    wait_for("every sent task run", lambda: len(ran(ledger)) >= len(out["sent"]) + 1, seconds=60)
    time.sleep(1)  # nothing more comes (a task run twice would)
    done = [n for n in ran(ledger) if n != -1]
    assert out["result"] == -1
    assert proc.poll() is None, "the worker exited"
    assert new in fleet.nodes
    assert len(done) == len(set(done)), "a task ran twice"
    assert set(done) == set(out["sent"]), f"lost: {sorted(set(out['sent']) - set(done))[:10]}"
    assert out["refused"] == 0
    print(f"\nswitchover: {len(out['sent'])} sent, 0 lost, 0 twice")


def test_after_the_primary_dies_the_worker_consumes_again_and_it_returns_as_a_replica(
    fleet, loaded
):
    ledger, proc, old, producer = loaded
    fleet.procs[old].send_signal(signal.SIGKILL)
    fleet.procs[old].wait(10)
    killed = time.monotonic()
    new = wait_for(
        "a replica promoted", lambda: fleet.primary() != old and fleet.primary(), seconds=60
    )
    before = len(ran(ledger))
    wait_for("the worker consumes again", lambda: len(ran(ledger)) >= before + 20, seconds=60)
    consuming = round(time.monotonic() - killed, 1)
    out = producer.finish()
    # the old primary comes back and is made a replica of the new one
    fleet.start_node(old)
    wait_for(
        "the old primary returns as a replica",
        lambda: (
            fleet.admin(old).info("replication")["role"] == "slave"
            and int(fleet.admin(old).info("replication")["master_port"]) == new
        ),
        seconds=60,
    )
    sent = set(out["sent"])
    wait_for(
        "the tasks sent after the failover run",
        lambda: {n for n in sent if n > max(sent) - 50} <= set(ran(ledger)),
        seconds=60,
    )
    done = ran(ledger)
    assert proc.poll() is None, "the worker exited"
    assert out["result"] == -1
    done = [n for n in done if n != -1]
    lost, twice = len(sent - set(done)), len(done) - len(set(done))
    print(
        f"\nprimary killed: {len(sent)} sent, {lost} lost, {twice} twice,"
        f" consuming again after {consuming} s"
    )


def test_without_the_launchers_options_a_sentinel_url_does_not_start(fleet, tmp_path):
    """The control: what the launcher's variables give. Celery alone, with the same URLs and
    without the primary's name, cannot connect (kombu asks for master_name)."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "shapeapp.py").write_text(APP)
    env = fleet.env(tmp_path / "ledger", app_dir)
    del env["CELERY_TOOLKIT_BROKER_TRANSPORT_OPTIONS"]
    proc = subprocess.run(
        [sys.executable, str(LAUNCH), "-A", "shapeapp", "inspect", "ping", "--timeout=1"],
        env=env,
        cwd=app_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "'master_name' transport option must be specified" in proc.stdout + proc.stderr


@pytest.mark.parametrize("value", ["{not json", '["master_name"]'])
def test_options_that_are_not_a_json_object_are_refused_naming_the_variable(value):
    env = {**os.environ, "CELERY_TOOLKIT_BROKER_TRANSPORT_OPTIONS": value}
    proc = subprocess.run(
        [sys.executable, str(LAUNCH), "-A", "x", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "celery_launch: CELERY_TOOLKIT_BROKER_TRANSPORT_OPTIONS is not" in proc.stderr
    assert "Traceback" not in proc.stderr
