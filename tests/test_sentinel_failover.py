"""A worker started by the launcher (roles/celery_app/files/celery_launch.py) against a broker
behind Redis Sentinel (issue 22), on this machine's redis-server: a primary, a replica and three
sentinels, ACL users as the toolkit makes them, the sentinels behind their own password.

The app knows nothing of Sentinel (an app the toolkit has never seen): the broker and the result
backend reach it as `sentinel://` URLs in CELERY_BROKER_URL and CELERY_RESULT_BACKEND, the primary's
name and the sentinels' password as JSON in the launcher's variables. Under a steady stream of
tasks, after a planned switchover (roles/redis/files/redis_switchover.py) and after the primary's
death (SIGKILL), tasks flow again: every task sent once the switch is over runs exactly once, and
the result backend answers through the sentinels. The worker is supervised as the toolkit's units
are (Restart=always), and neither it nor the producer may have to start again. kombu 5.7.0 alone
killed the worker on the lost connection in 2 of 8 kills beside other work and in one CI run:
closing the channel gives back its unacked messages through a connection whose client is already
gone (AttributeError 'NoneType' object has no attribute 'hostname'), which Celery takes for an
unrecoverable error. The launcher's hold_client() keeps that client (tests/test_celery_launch.py
shows both); with it, 0 exits in 14 kills and 48 switchovers beside other work.

A bare SENTINEL FAILOVER is not a planned switchover: clients keep their connections to the old
primary until Sentinel makes it a replica (8 to 11 s later here), and what they write to it in
between is not on the new primary (plain LPUSHes every 20 ms: 416 and 534 lost). The script
pauses the primary's writes, waits for the replicas, has a sentinel promote one and makes the old
primary a replica at once: 0 of ~200 LPUSHes lost in 3 runs, writes held 1.2 to 2.5 s. Under
Celery below, no task lost in 26 runs, but a task running when the old primary's connections
close is given back by kombu and runs again (acks_late): 5 of those 26 runs. With the workers'
consumers stopped first (the playbook's way, to come), 0 lost and 0 run twice in 16 runs.
What the primary's death costs (tasks lost, run twice, left in `unacked`) is printed, not
asserted: replication is asynchronous, so the last writes acknowledged by a primary that dies
may not be on the replica (1 task lost in 3 of 14 kills here). The replicated fleet's benchmark
is to measure both, ten runs each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from local_redis import free_port, redis_server

# one fleet at a time on a worker of pytest-xdist (--dist loadgroup): two at once, beside the
# Molecule lanes, would race for the CPU that Sentinel's timeouts count on
pytestmark = pytest.mark.xdist_group("sentinel")

FILES = Path(__file__).resolve().parent.parent / "roles/celery_app/files"
LAUNCH = FILES / "celery_launch.py"
SWITCHOVER = FILES.parent.parent / "redis/files/redis_switchover.py"
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

# Publishes tasks until the stop file appears; prints [number, time] of those it was told were sent
PRODUCER = """
import json, os, sys, time
import celery_launch
celery_launch.configure()
from shapeapp import record
sent, refused, n = [], 0, 0
log = open(sys.argv[2], "a", buffering=1)  # what was sent so far, for the test to follow
while not os.path.exists(sys.argv[1]):
    try:
        at = time.time()
        record.apply_async((n,), retry=True, retry_policy={"max_retries": 30, "interval_start": 0.2,
                                                           "interval_step": 0.2, "interval_max": 1})
        sent.append([n, at])
        log.write(f"{n} {at}\\n")
    except Exception:
        refused += 1
    n += 1
    time.sleep(0.02)
# the result backend through the sentinels as well: a task's return value, read back
result = record.delay(-1).get(timeout=60)
print(json.dumps({"sent": sent, "refused": refused, "result": result}))
"""


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
        server = redis_server()
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
            f"dbfilename dump-{port}.rdb",
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
        proc = subprocess.Popen([self.server, str(conf)], stdout=subprocess.DEVNULL)
        self.procs[port] = proc
        wait_for(f"redis {port} answers", lambda: proc.poll() is None and self.admin(port).ping())
        assert proc.poll() is None, f"redis-server on {port} exited ({proc.returncode})"

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
                    self.alive(port)
                    and len(self.sentinel(port).sentinel_slaves(MASTER)) == 1
                    and len(self.sentinel(port).sentinel_sentinels(MASTER)) == 2
                ),
            )

    def alive(self, port: int) -> bool:
        """The server on `port` that this fleet started still runs, or the test fails now."""
        if self.procs[port].poll() is not None:
            pytest.fail(f"redis-server on {port} exited ({self.procs[port].returncode})")
        return True

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
                proc.wait()


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path)
    try:
        fleet.start()
        yield fleet
    finally:
        fleet.stop()


class Worker:
    """The launcher's worker, supervised as the toolkit's units are (systemd's Restart=always):
    `alive()` starts it again if it exited, and counts how often it had to."""

    ARGV = ["-A", "shapeapp", "worker", "--pool=prefork", "--concurrency=2", "--without-gossip",
            "--without-mingle", "--loglevel=INFO"]  # fmt: skip

    def __init__(self, env: dict, app_dir: Path, log):
        self.env, self.app_dir, self.log, self.deaths = env, app_dir, log, []
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(LAUNCH), *self.ARGV],
            env=self.env,
            cwd=self.app_dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            self.deaths.append(self.proc.returncode)
            self.start()
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def worker(fleet, tmp_path):
    """The supervised worker on the fleet; yields (env, ledger path, Worker)."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "shapeapp.py").write_text(APP)
    ledger = tmp_path / "ledger"
    ledger.touch()
    env = fleet.env(ledger, app_dir)
    with open(tmp_path / "worker.log", "w") as log:
        supervised = Worker(env, app_dir, log)
        try:
            yield env, ledger, supervised
        finally:
            supervised.stop()


def ran(ledger: Path) -> list[int]:
    return [int(line) for line in ledger.read_text().split()]


class Producer:
    def __init__(self, env: dict, folder: Path):
        self.stop_file = folder / "stop-producing"
        self.sent_file = folder / "sent"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(self.stop_file), str(self.sent_file)],
            env=env,
            cwd=folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def sent_after(self, since: float) -> set[int]:
        """The tasks sent after `since` so far (time.time() of the publish's start)."""
        lines = self.sent_file.read_text().splitlines() if self.sent_file.exists() else []
        return {int(n) for n, at in (line.split() for line in lines[:-1]) if float(at) > since}

    def finish(self) -> dict:
        self.stop_file.touch()
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err[-3000:]
        return json.loads(out.splitlines()[-1])

    def stop(self) -> None:
        self.stop_file.touch()
        if self.proc.poll() is None:
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


@pytest.fixture
def loaded(fleet, worker, tmp_path):
    """Tasks flowing, the first 20 run; yields (ledger, Worker, primary port, producer)."""
    env, ledger, supervised = worker
    old = fleet.primary()
    producer = Producer(env, tmp_path)
    try:
        wait_for("the worker runs the first tasks", lambda: len(ran(ledger)) >= 20)
        yield ledger, supervised, old, producer
    finally:
        producer.stop()


def demoted(fleet: Fleet, old: int, new: int) -> bool:
    """Whether Sentinel has made the old primary a replica of the new one."""
    info = fleet.admin(old).info("replication")
    return info["role"] == "slave" and int(info["master_port"]) == new


def settle(
    fleet: Fleet, ledger: Path, worker: Worker, producer: Producer, new: int, since: float
) -> dict:
    """Once the worker consumes from the new primary: stop producing, wait until every task sent
    after `since` ran, and count. Asserts what must hold whatever the failover cost."""
    wait_for(
        "the worker runs 20 tasks sent after the failover",
        lambda: worker.alive() and len(producer.sent_after(since) & set(ran(ledger))) >= 20,
        seconds=60,
    )
    out = producer.finish()
    sent = {n for n, _ in out["sent"]}
    after = {n for n, at in out["sent"] if at > since}
    assert len(after) >= 20, out["sent"][-5:]
    wait_for(
        "every task sent after the failover run",
        lambda: worker.alive() and after <= set(ran(ledger)),
        seconds=60,
    )
    time.sleep(1)  # what a task run twice would add comes now
    done = ran(ledger)
    assert out["result"] == -1, "the result backend did not answer through the sentinels"
    runs = [n for n in done if n in after]
    assert len(runs) == len(after), "a task sent after the failover ran twice"
    assert not worker.deaths, f"the worker exited (codes {worker.deaths}): see {worker.log.name}"
    primary = fleet.admin(new)
    return {
        "sent": len(sent),
        "lost": len(sent - set(done)),
        "twice": len(done) - len(set(done)),
        "left in unacked": primary.hlen("unacked"),
        "refused": out["refused"],
        "worker restarted": len(worker.deaths),
    }


def switchover(fleet: Fleet, folder: Path) -> subprocess.CompletedProcess:
    """roles/redis/files/redis_switchover.py on the fleet, its passwords in a file of mode 0600."""
    config = folder / "switchover.json"
    config.touch(mode=0o600)
    config.write_text(
        json.dumps(
            {
                "master_name": MASTER,
                "sentinels": [["127.0.0.1", port] for port in fleet.sentinels],
                "sentinel_auth": {"password": SENTINEL_PASSWORD},
                "node_auth": {"username": "admin", "password": ADMIN_PASSWORD},
            }
        )
    )
    return subprocess.run(
        [sys.executable, str(SWITCHOVER), str(config)], capture_output=True, text=True, timeout=90
    )


def test_a_planned_switchover_loses_no_task(fleet, loaded, tmp_path):
    """The switchover script under load: the old primary is a replica as soon as a replica is
    promoted (no write reaches it after), every task sent, before or after, runs, and those
    sent after it run exactly once. Printed, not asserted: tasks run twice. A task still running
    when the script closes the old primary's connections is given back by kombu when the
    worker's channel closes, and runs again (acks_late; Celery's own warning says so): 5 of 26
    runs here. Issue 22 asks for none: hence the test below, consumers stopped first."""
    ledger, worker, old, producer = loaded
    proc = switchover(fleet, tmp_path)
    switched = time.time()
    assert proc.returncode == 0, proc.stderr
    assert f"switched {MASTER}: 127.0.0.1:{old} -> 127.0.0.1:" in proc.stdout, proc.stdout
    new = fleet.primary()
    assert new != old and demoted(fleet, old, new)
    figures = settle(fleet, ledger, worker, producer, new, since=switched)
    print(f"\nplanned switchover under load: {figures}; {proc.stdout.strip()}")
    assert figures["lost"] == 0, figures


def celery(worker: Worker, *args: str) -> str:
    """The app's `celery` command, through the launcher, as the worker runs it."""
    proc = subprocess.run(
        [sys.executable, str(LAUNCH), "-A", "shapeapp", *args],
        env=worker.env,
        cwd=worker.app_dir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_planned_switchover_with_the_consumers_stopped_runs_every_task_once(
    fleet, loaded, tmp_path
):
    """The switchover as the playbook is to do it: the workers stop consuming and finish what they
    hold (no entry left in `unacked`), the switch, then they consume again. Producers go on all
    along; every task runs exactly once."""
    ledger, worker, old, producer = loaded
    started = time.time()
    celery(worker, "control", "cancel_consumer", "celery")
    wait_for("the worker holds no message", lambda: fleet.admin(old).hlen("unacked") == 0, 60)
    proc = switchover(fleet, tmp_path)
    assert proc.returncode == 0, proc.stderr
    new = fleet.primary()
    assert new != old and demoted(fleet, old, new)
    celery(worker, "control", "add_consumer", "celery")
    figures = settle(fleet, ledger, worker, producer, new, since=started - 60)
    print(f"\nplanned switchover, consumers stopped: {figures}; {proc.stdout.strip()}")
    assert figures["lost"] == 0 and figures["twice"] == 0, figures


def test_a_switchover_without_a_replica_in_sync_changes_nothing(fleet, tmp_path):
    """Its refusal: the replica stopped, the script says which step failed, writes resume on the
    primary it left in place."""
    primary, replica = fleet.nodes
    fleet.procs[replica].terminate()
    fleet.procs[replica].wait(10)
    wait_for(
        "the primary sees its replica gone",
        lambda: not fleet.admin(primary).execute_command("ROLE")[2],
    )
    proc = switchover(fleet, tmp_path)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip() == f"redis_switchover: 127.0.0.1:{primary} has no replica to switch to"
    )
    assert fleet.primary() == primary
    fleet.admin(primary).set("after", "1")  # not paused any more


def test_after_the_primary_dies_tasks_flow_again_and_it_returns_as_a_replica(fleet, loaded):
    ledger, worker, old, producer = loaded
    fleet.procs[old].send_signal(signal.SIGKILL)
    fleet.procs[old].wait(10)
    killed = time.monotonic()
    new = wait_for(
        "a replica promoted", lambda: fleet.primary() != old and fleet.primary(), seconds=60
    )
    promoted = time.time()
    before = len(ran(ledger))
    wait_for(
        "the worker consumes again",
        lambda: worker.alive() and len(ran(ledger)) >= before + 5,
        seconds=60,
    )
    consuming = round(time.monotonic() - killed, 1)
    # the old primary comes back and is made a replica of the new one
    fleet.start_node(old)
    wait_for("the old primary returns as a replica", lambda: demoted(fleet, old, new), 60)
    figures = settle(fleet, ledger, worker, producer, new, since=promoted + 1)
    print(f"\nprimary killed: {figures}, consuming again after {consuming} s")


def test_without_the_launchers_options_a_sentinel_url_does_not_start(fleet, tmp_path):
    """The control: what the launcher's variables give. Without them, the same URLs and the
    same app do not connect (kombu asks for master_name)."""
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "shapeapp.py").write_text(APP)
    env = fleet.env(tmp_path / "ledger", app_dir)
    del env["CELERY_TOOLKIT_BROKER_TRANSPORT_OPTIONS"]
    del env["CELERY_TOOLKIT_RESULT_BACKEND_TRANSPORT_OPTIONS"]
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


# Flower 2.2's own client for its Broker page and /api/queues/length (flower.utils.broker
# .RedisSentinel): redis.asyncio's Sentinel of the first part of the URL only, asked once. The
# same with redis-py's Sentinel (blocking), which other tools build the same way.
FLOWERS_CLIENT = """
import asyncio, os, sys
import celery_launch
if sys.argv[2] == "launcher":
    celery_launch.configure(os.environ)
from redis import sentinel
from redis.asyncio import sentinel as asyncio_sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

def client(module, retry):
    once = {"socket_connect_timeout": 1, "socket_timeout": 1, "retry": retry(NoBackoff(), 0)}
    return module.Sentinel([("127.0.0.1", int(sys.argv[1]))], username="app",
                           password=os.environ["APP_PASSWORD"],
                           sentinel_kwargs={"password": os.environ["SENTINEL_PASSWORD"], **once},
                           **once).master_for(os.environ["MASTER"])

async def flower():
    return await client(asyncio_sentinel, AsyncRetry).llen("nothing")

for run in (lambda: asyncio.run(flower()), lambda: client(sentinel, Retry).llen("nothing")):
    try:
        print(run())
    except Exception as exc:
        print(type(exc).__name__)
"""


def test_flowers_client_of_the_first_sentinel_finds_the_primary_while_that_sentinel_is_down(
    fleet, tmp_path
):
    """With the first sentinel's VM lost, Flower's queue lengths still come (the launcher gives
    a client of one of the URL's sentinels the others after it); without it, they do not."""
    first = fleet.sentinels[0]
    fleet.procs[first].terminate()
    fleet.procs[first].wait(10)
    env = {
        **fleet.env(tmp_path / "ledger", tmp_path),
        "APP_PASSWORD": APP_PASSWORD,
        "SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        "MASTER": MASTER,
    }
    said = {
        how: subprocess.run(
            [sys.executable, "-c", FLOWERS_CLIENT, str(first), how],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        for how in ("launcher", "without")
    }
    assert said["launcher"].stdout.split() == ["0", "0"], said["launcher"]
    assert said["without"].stdout.split() == ["MasterNotFoundError"] * 2, said["without"]


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


MERGE = r"""
import json, os, sys
import celery_launch
celery_launch.configure()
from celery import Celery

class Django:  # what app.config_from_object('django.conf:settings', namespace='CELERY') reads
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7200,
                                       "sentinel_kwargs": {"socket_timeout": 1}}

out = {}
plain = Celery("plain")
plain.conf.broker_transport_options = {"visibility_timeout": 7200}  # before loading: the app's
out["plain"] = plain.conf.broker_transport_options
django = Celery("django")
django.config_from_object(Django, namespace="CELERY")
out["django"] = django.conf.broker_transport_options
later = Celery("later")
later.conf.result_backend_transport_options  # loaded, then configured again
later.config_from_object(Django, namespace="CELERY")
out["later"] = later.conf.result_backend_transport_options
out["settings"] = [plain.conf.redis_socket_timeout, django.conf.redis_backend_health_check_interval]
from kombu.transport import redis as transport
out["recoverable"] = [e.__name__ for e in transport.SentinelTransport.recoverable_connection_errors]
out["plain_recoverable"] = hasattr(transport.Transport, "recoverable_connection_errors")
# redis-py's Retry is an object: its class and number of retries
print(json.dumps(out, default=lambda o: f"{type(o).__name__}:{o._retries}"))
"""


def test_the_options_merge_over_the_apps_own_however_it_configures_itself():
    options = {"master_name": "m", "sentinel_kwargs": {"password": "p"}}
    env = {
        **os.environ,
        "PYTHONPATH": str(FILES),
        "CELERY_TOOLKIT_BROKER_TRANSPORT_OPTIONS": json.dumps(options),
        "CELERY_TOOLKIT_RESULT_BACKEND_TRANSPORT_OPTIONS": json.dumps({"master_name": "m"}),
        # settings of their own (the result backend's sockets), set as they are
        "CELERY_TOOLKIT_SETTINGS": json.dumps(
            {"redis_socket_timeout": 10, "redis_backend_health_check_interval": 5}
        ),
    }
    proc = subprocess.run(
        [sys.executable, "-c", MERGE], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    # each sentinel is asked once per connection (the next one answers): Retry with 0 retries
    once = {"retry": "Retry:0"}
    assert out["plain"] == {
        "visibility_timeout": 7200,
        "master_name": "m",
        "sentinel_kwargs": {"password": "p", **once},
    }
    # Django's CELERY_ namespace; a nested object merged key by key, the app's own keys kept
    assert out["django"] == {
        "visibility_timeout": 7200,
        "master_name": "m",
        "sentinel_kwargs": {"socket_timeout": 1, "password": "p", **once},
    }
    assert out["later"] == {"master_name": "m", "sentinel_kwargs": once}
    assert out["settings"] == [10, 5]
    # a publish through the sentinels is retried by its retry policy, not once
    assert "ConnectionError" in out["recoverable"] and "TimeoutError" in out["recoverable"]
    assert not out["plain_recoverable"], "only the Sentinel transport is changed"


@pytest.mark.parametrize(
    "config, said",
    [
        ({"sentinels": [["127.0.0.1", 1]]}, "gives no master_name, sentinel_auth, node_auth"),
        (
            {
                "master_name": MASTER,
                "sentinels": [["127.0.0.1", free_port()] for _ in range(3)],
                "sentinel_auth": {"password": SENTINEL_PASSWORD},
                "node_auth": {"username": "admin", "password": ADMIN_PASSWORD},
            },
            f"no majority of the 3 sentinels names one primary of '{MASTER}' (they say nothing)",
        ),
    ],
    ids=["a-setting-missing", "no-sentinel-answers"],
)
def test_the_switchover_script_refuses_in_one_line(tmp_path, config, said):
    path = tmp_path / "switchover.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, str(SWITCHOVER), str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and said in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


PUBLISH = r"""
import json, sys, time
import celery_launch
celery_launch.configure()
from kombu import Connection, Exchange, Queue
import os
queue = Queue("w", Exchange("w"), "w")
out = []
with Connection(os.environ["CELERY_BROKER_URL"],
                transport_options=json.loads(os.environ["CELERY_TOOLKIT_BROKER_TRANSPORT_OPTIONS"])
                ) as conn, conn.Producer() as producer:
    for i in range(int(sys.argv[1])):
        started = time.monotonic()
        producer.publish({"n": i}, exchange=queue.exchange, routing_key="w", declare=[queue])
        out.append(time.monotonic() - started)
print(json.dumps(out))
"""


def test_a_publish_returns_once_a_replica_has_it(fleet, tmp_path):
    """celery_launch's publish through the sentinels: LPUSH then WAIT on one connection. With
    the replica up, it returns at once and the replica has the message; with the replica gone,
    it returns after the bound, with a warning, and the primary has the message."""
    env = fleet.env(tmp_path / "ledger", tmp_path)
    primary, replica = fleet.nodes

    def publish(count: int) -> tuple[list[float], str]:
        proc = subprocess.run(
            [sys.executable, "-c", PUBLISH, str(count)],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.splitlines()[-1]), proc.stderr

    times, said = publish(20)
    assert "no replica had the message" not in said and "refuses WAIT" not in said, said
    assert max(times[1:]) < 0.2, times  # a replica on this machine answers within ms
    # WAIT returned: the replica has every message already, without waiting for it here
    assert fleet.admin(replica).llen("w") == 20
    fleet.procs[replica].terminate()
    fleet.procs[replica].wait(10)
    times, said = publish(2)
    assert said.count("no replica had the message") == 2, said
    assert all(0.5 <= t < 2.0 for t in times), times
    assert fleet.admin(primary).llen("w") == 22
