"""The worker launcher (roles/celery_app/files/celery_launch.py) against a real redis-server over
its maxmemory (noeviction): a message a worker pops is recorded in `unacked`, acknowledged,
rejected and given back, and a task's state is stored; the same steps without the launcher's
patch lose the popped message and are refused (the control: what the patch designs out)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from local_redis import free_port, redis_server

FILES = Path(__file__).resolve().parent.parent / "roles/celery_app/files"
LAUNCH = FILES / "celery_launch.py"

# Run in a child Python: the patch changes kombu's classes for the whole process.
DRIVER = r"""
import json, sys
import redis
from kombu import Connection, Exchange, Queue
port, patched = int(sys.argv[1]), sys.argv[2] == "1"
if patched:
    import celery_launch
    celery_launch.patch()
url = f"redis://127.0.0.1:{port}/0"
admin = redis.Redis(port=port)
out = {"refused": []}
queue = Queue("q", Exchange("q"), "q")
with Connection(url) as conn:
    with conn.Producer() as producer:
        for i in range(40):
            producer.publish({"n": i, "pad": "x" * 2000}, exchange=queue.exchange,
                             routing_key="q", declare=[queue])
    seen = []
    def on_message(body, message):
        seen.append((body["n"], message))
    consumer = conn.Consumer(queue, callbacks=[on_message], accept=["json"])
    consumer.qos(prefetch_count=1)
    # over the limit, whatever a pop frees: a filler key, then a limit below what is used
    admin.set("filler", b"f" * 300_000)
    used = int(admin.info("memory")["used_memory"])
    admin.config_set("maxmemory", used - 100_000)
    out["queued"] = admin.llen("q")
    try:
        with conn.Producer() as producer:
            producer.publish({"n": -1}, exchange=queue.exchange, routing_key="q")
    except Exception as exc:
        out["refused"].append(f"publish: {type(exc).__name__}")
    with consumer:
        for step in ("ack", "reject", "requeue", "restore"):
            before = len(seen)
            try:
                while len(seen) == before:
                    conn.drain_events(timeout=2)
            except Exception as exc:
                out["refused"].append(f"{step} pop: {type(exc).__name__}")
                out["after_refused_pop"] = {
                    "unacked": admin.hlen("unacked"), "queued": admin.llen("q")}
                break
            out[f"{step}_unacked"] = admin.hlen("unacked")
            n, message = seen[-1]
            try:
                if step == "ack":
                    message.ack()
                elif step == "reject":
                    message.reject()
                elif step == "requeue":
                    message.reject(requeue=True)
                else:
                    consumer.channel.qos.restore_unacked()
            except Exception as exc:
                out["refused"].append(f"{step}: {type(exc).__name__}")
            out[f"{step}_after"] = {"unacked": admin.hlen("unacked"), "queued": admin.llen("q")}
    # a worker that starts at the limit declares its queues (their lengths in a MULTI, their
    # bindings) and its pidbox queue (x-expires: kombu's binding script)
    with Connection(url) as fresh:
        for declared in (queue, Queue("p", Exchange("p", "fanout"), expires=10)):
            try:
                fresh.Consumer(declared, accept=["json"]).close()
            except Exception as exc:
                out["refused"].append(f"declare {declared.name}: {type(exc).__name__}")
        try:  # mingle, at a worker's start, deletes the reply queue of its hello (a MULTI)
            fresh.default_channel._delete("r", "r", "r", None)  # what queue_delete calls
        except Exception as exc:
            out["refused"].append(f"delete r: {type(exc).__name__}")
    out["bindings"] = sorted(k.decode() for k in admin.keys("_kombu.binding.*"))
    out["redelivered"] = sum(1 for m in admin.lrange("q", 0, -1) if b'"redelivered": true' in m)
    out["over_limit"] = int(admin.info("memory")["used_memory"]) > int(
        admin.config_get("maxmemory")["maxmemory"])
from celery import Celery
app = Celery(backend=f"redis://127.0.0.1:{port}/1", broker=url)
# the clients closed above give back their buffers, as Redis gets to it: the limit far below
# what is used now (half), or the state write may fit under it (100 kB below: one run in five
# here, and one CI run, stored the unpatched write)
admin.config_set("maxmemory", int(admin.info("memory")["used_memory"]) // 2)
try:
    app.backend.store_result("t-1", None, "STARTED")
    out["state"] = app.backend.get_task_meta("t-1")["status"]
except Exception as exc:
    out["refused"].append(f"state: {type(exc).__name__}")
print(json.dumps(out))
"""


@pytest.fixture
def redis_port(tmp_path):
    """A redis-server of this machine's (Debian's 7.0 on CI), started here, stopped by pid."""
    server, port = redis_server(), free_port()
    proc = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--maxmemory-policy",
            "noeviction",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def drive(port: int, patched: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(FILES)}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(port), "1" if patched else "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_full_redis_refuses_publishes_and_records_every_pop(redis_port):
    out = drive(redis_port, patched=True)
    # producers are still refused at the limit: they know at once
    assert out["refused"] == ["publish: OutOfMemoryError"], out
    assert out["queued"] == 40
    # popped over the limit, and recorded in unacked (kombu's MULTI ZADD HSET is refused there)
    assert out["ack_unacked"] == 1
    # the ack frees memory; a reject drops; a requeue and a restore push back, marked redelivered
    assert out["ack_after"] == {"unacked": 0, "queued": 39}
    assert out["reject_after"] == {"unacked": 0, "queued": 38}
    assert out["requeue_after"] == {"unacked": 0, "queued": 38}
    assert out["restore_after"] == {"unacked": 0, "queued": 38}
    assert out["redelivered"] == 2
    assert "_kombu.binding.p" in out["bindings"], out  # the pidbox-like queue bound at the limit
    assert out["over_limit"]  # all of it done above maxmemory
    # a task's STARTED state is stored (task_track_started: refused, the task is not run)
    assert out["state"] == "STARTED"


def test_without_the_patch_the_popped_message_is_lost(redis_port):
    out = drive(redis_port, patched=False)
    assert out["refused"][0] == "publish: OutOfMemoryError", out
    # the pop took the message off the list; its bookkeeping was refused: in no list, no hash
    assert "ack pop: OutOfMemoryError" in out["refused"], out
    assert out["after_refused_pop"] == {"unacked": 0, "queued": 39}
    assert "declare q: OutOfMemoryError" in out["refused"], out
    assert "declare p: OutOfMemoryError" in out["refused"], out
    assert "delete r: OutOfMemoryError" in out["refused"], out
    assert "state: OutOfMemoryError" in out["refused"], out


def test_check_passes_for_the_tested_kombu_and_celery():
    proc = subprocess.run(
        [sys.executable, str(LAUNCH), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "can be patched" in proc.stdout


def test_a_kombu_without_what_is_patched_is_refused_with_the_fix(tmp_path):
    # a kombu whose QoS.append took other parameters: the check names it and the fix
    shadow = tmp_path / "sitecustomize.py"
    shadow.write_text(
        "import kombu.transport.redis as r\n"
        "def append(self, message, delivery_tag, pipe=None):\n    pass\n"
        "r.QoS.append = append\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for argv in (["--check"], ["-A", "x", "worker"]):
        proc = subprocess.run(
            [sys.executable, str(LAUNCH), *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert proc.returncode == (1 if argv == ["--check"] else 78), proc.stderr
        text = proc.stdout + proc.stderr
        assert "kombu.transport.redis:QoS.append(self, message, delivery_tag, pipe=None)" in text
        assert "celery_app_constraints" in text


# issue 22: after a Sentinel failover the worker's BRPOP pops on the new primary, and the
# bookkeeping write goes through a pooled connection that still names the lost one. Here that
# connection's failure is made (FAIL times): the write is tried again on a new connection.
RECORD = r"""
import json, sys
import redis
from kombu import Connection, Exchange, Queue
import celery_launch
port, fail = int(sys.argv[1]), int(sys.argv[2])
celery_launch.patch()
celery_launch.RECORD_PAUSE = 0.01
real, failed, emptied = celery_launch.run_script, [], []
def run_script(client, text, keys, args):
    if text == celery_launch.APPEND and len(failed) < fail:
        failed.append(1)
        raise redis.exceptions.ConnectionError("Error 111 connecting to the lost primary")
    return real(client, text, keys, args)
celery_launch.run_script = run_script
admin = redis.Redis(port=port)
queue = Queue("q", Exchange("q"), "q")
out = {"seen": []}
with Connection(f"redis://127.0.0.1:{port}/0") as conn:
    conn.Producer().publish({"n": 1}, exchange=queue.exchange, routing_key="q", declare=[queue])
    channel = conn.default_channel
    disconnect = channel.pool.disconnect
    channel.pool.disconnect = lambda *a, **k: (emptied.append(1), disconnect(*a, **k))
    def on_message(body, message):  # after the message was recorded
        out["seen"].append(body["n"])
        out["emptied"] = len(emptied)
    consumer = conn.Consumer(queue, callbacks=[on_message], accept=["json"])
    consumer.qos(prefetch_count=1)
    with consumer:
        try:
            conn.drain_events(timeout=5)
        except Exception as exc:
            out["error"] = type(exc).__name__
        out["unacked"], out["queued"] = admin.hlen("unacked"), admin.llen("q")
out["failed"] = len(failed)
print(json.dumps(out))
"""


@pytest.mark.parametrize("fail", [1, 5, 6])
def test_a_popped_message_is_recorded_through_a_new_connection(redis_port, fail):
    env = {**os.environ, "PYTHONPATH": str(FILES)}
    proc = subprocess.run(
        [sys.executable, "-c", RECORD, str(redis_port), str(fail)],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    if fail < 6:  # RECORD_ATTEMPTS: the pool emptied before each new try
        assert out == {"seen": [1], "unacked": 1, "queued": 0, "failed": fail, "emptied": fail}
        assert proc.stderr.count("recording") == fail, proc.stderr
    else:  # the bound: said in the worker's log, with the message's tag
        assert out["error"] == "ConnectionError" and out["seen"] == [] and out["unacked"] == 0
        assert "popped but not recorded in unacked after 6 attempts" in proc.stderr


# issue 22: the state Celery's consumer leaves when its broker dies under it. Connection.collect()
# could not close the default channel (its socket is dead) and set the transport's client to None;
# Celery then closes the connection, and the channel's close gives back its unacked messages.
COLLECTED = r"""
import json, sys
import redis
from kombu import Connection, Exchange, Queue
port, patched = int(sys.argv[1]), sys.argv[2] == "1"
if patched:
    import celery_launch
    celery_launch.patch()
    celery_launch.hold_client()
admin = redis.Redis(port=port)
queue = Queue("q", Exchange("q"), "q")
out = {}
conn = Connection(f"redis://127.0.0.1:{port}/0")
with conn.Producer() as producer:
    for i in range(3):
        producer.publish({"n": i}, exchange=queue.exchange, routing_key="q", declare=[queue])
seen = []
consumer = conn.Consumer(queue, callbacks=[lambda body, message: seen.append(body)])
consumer.qos(prefetch_count=3)
consumer.consume()
while len(seen) < 3:
    conn.drain_events(timeout=5)
out["held"] = {"unacked": admin.hlen("unacked"), "queued": admin.llen("q")}
conn._do_close_transport()  # what collect() does after the channel's close failed
try:
    conn.close()  # what Celery's consumer does next (ignore_errors lets AttributeError through)
    out["close"] = "ok"
except Exception as exc:
    out["close"] = f"{type(exc).__name__}: {exc}"
out["after"] = {"unacked": admin.hlen("unacked"), "queued": admin.llen("q")}
print(json.dumps(out))
"""


def child(code: str, *args: str) -> dict:
    """CODE in a child Python that can import the launcher; the JSON its last line prints."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(FILES)},
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def collected(port: int, patched: bool) -> dict:
    return child(COLLECTED, str(port), "1" if patched else "0")


def test_a_channel_closed_after_its_connection_was_collected_gives_back_its_messages(redis_port):
    out = collected(redis_port, patched=True)
    assert out["held"] == {"unacked": 3, "queued": 0}, out
    assert out["close"] == "ok", out
    assert out["after"] == {"unacked": 0, "queued": 3}, out


def test_without_the_launcher_that_close_kills_the_worker(redis_port):
    """kombu 5.7.0 as released: the error Celery reports as unrecoverable (the worker exits)."""
    out = collected(redis_port, patched=False)
    assert out["held"] == {"unacked": 3, "queued": 0}, out
    assert out["close"].startswith("AttributeError"), out
    assert "hostname" in out["close"], out


# issue 22: an ack the broker's loss interrupts (the task ran; a switchover or the primary's death
# closed the connection). The broker comes back with its data (append-only file), as a promoted
# replica would have it.
LATE_ACK = r"""
import base64, json, subprocess, sys, time
import redis
from kombu import Connection, Exchange, Queue
server, port, folder, patched = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
if patched:
    import celery_launch
    celery_launch.patch()
    celery_launch.hold_client()
argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
        "--appendfsync", "always", "--dir", folder]
def start():
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    for _ in range(200):
        try:
            redis.Redis(port=port).ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")
proc = start()
admin = redis.Redis(port=port)
queue = Queue("q", Exchange("q"), "q")
out = {}
conn = Connection(f"redis://127.0.0.1:{port}/0", transport_options={"max_retries": 0})
with conn.Producer() as producer:
    producer.publish({"n": 0}, exchange=queue.exchange, routing_key="q", declare=[queue])
seen = []
consumer = conn.Consumer(queue, callbacks=[lambda body, message: seen.append(message)])
consumer.qos(prefetch_count=1)
consumer.consume()
while not seen:
    conn.drain_events(timeout=5)
proc.terminate(); proc.wait(10)  # the broker goes away while the task runs
try:
    seen[0].ack()
    out["ack"] = "ok"
except Exception as exc:
    out["ack"] = type(exc).__name__
proc = start()  # back, with what it had: the message in `unacked`
out["unacked_when_back"] = admin.hlen("unacked")
try:
    conn.close()  # the consumer's connection closes; kombu gives back what it holds
except Exception as exc:
    out["close"] = type(exc).__name__
out["queued_after_close"] = admin.llen("q")
with Connection(f"redis://127.0.0.1:{port}/0") as fresh:  # the next delivery, as a worker's next
    with fresh.Producer() as producer:
        producer.publish({"n": 1}, exchange=queue.exchange, routing_key="q", declare=[queue])
    got = []
    with fresh.Consumer(queue, callbacks=[lambda body, message: got.append(body)]):
        while not got:
            fresh.drain_events(timeout=5)
    out["unacked_after_next_delivery"] = sorted(  # the n of each message held there
        json.loads(base64.b64decode(json.loads(v)[0]["body"]))["n"] for v in admin.hvals("unacked"))
proc.terminate(); proc.wait(10)
print(json.dumps(out))
"""


def late_ack(tmp_path: Path, patched: bool) -> dict:
    flag = "1" if patched else "0"
    return child(LATE_ACK, redis_server(), str(free_port()), str(tmp_path), flag)


def test_an_ack_the_brokers_loss_interrupted_is_done_later_not_run_again(tmp_path):
    out = late_ack(tmp_path, patched=True)
    assert out["ack"] == "ok", out  # the task is done: its message is not given back
    assert out["unacked_when_back"] == 1, out
    assert out["queued_after_close"] == 0, out
    # the next delivery's connection removed the first entry; the second one is held
    assert out["unacked_after_next_delivery"] == [1], out


def test_without_the_launcher_that_task_would_run_again(tmp_path):
    out = late_ack(tmp_path, patched=False)
    assert out["ack"] != "ok", out
    assert out["unacked_when_back"] == 1 and out["queued_after_close"] == 1, out
    assert out["unacked_after_next_delivery"] == [0], out  # delivered again
