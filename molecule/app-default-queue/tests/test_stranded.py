"""Issue 21: moving the broker does not strand queued messages. With the group stopped, six
tasks wait for it on database 0 (two with a priority, one taken as an unacked entry): a deploy
to database 1 is refused with the counts before the host changes; playbooks/move-queues.yml
gives the unacked one back and moves them, each arriving once (counted by task id); the deploy
then passes and the group runs them. Back to database 0 with two messages left on 1, the deploy
passes only because celery_deploy_drop_queued says they may stay. Runs after test_exporter.py
and leaves the host as it found it (database 0, the group running, nothing queued)."""

import collections
import json
import os
import re

from playbook_runner import run_as_app, run_playbook, wait_for

SHAPE = json.loads(os.environ["APP_SHAPE"])
APP = SHAPE["app"]
GROUP, QUEUES = next(iter(SHAPE["groups"].items()))
QUEUE = QUEUES[0]
FACT = f"/etc/ansible/facts.d/{APP}.fact"
ENV_FILE = f"/etc/{APP}/{APP}.env"
# the scenario's own sandbox URLs (molecule.yml), on database 1
ON_DB1 = {
    "celery_app_broker_url": "redis://tinyq:sandbox-tinyq-password-not-secret@127.0.0.1:6379/1",
    "flower_broker_url": "redis://tinyq-flower:sandbox-tinyq-flower-password@127.0.0.1:6379/1",
}
# Runs as the app (<app>-run python -c ...) with its own Redis user, on database DB of the
# broker its environment names: send N tasks (every third with a priority) and print their ids;
# take the oldest as an unacked entry, as a worker that died holding it leaves it; list the ids
# waiting in the queue's lists (priority lists included) and the unacked entries; clean.
AS_APP = """
import json, os, sys, time
from celery.app.utils import find_app
app = find_app(os.environ["CELERY_APP"])
what, queue, db = sys.argv[1], sys.argv[2], sys.argv[3]
url = os.environ["CELERY_BROKER_URL"].rsplit("/", 1)[0] + "/" + db
keys = [queue] + [queue + chr(6) + chr(22) + str(step) for step in (3, 6, 9)]
with app.connection_for_write(url) as conn:
    client = conn.default_channel.client
    if what == "send":
        ids = []
        for n in range(int(sys.argv[4])):
            ids.append(app.send_task("celery.accumulate", args=["stranded-test"], queue=queue,
                                     priority=5 if n % 3 == 2 else None, connection=conn).id)
        print(json.dumps(ids))
    elif what == "unack":
        raw = client.rpop(queue)
        payload = json.loads(raw)
        info = payload["properties"]["delivery_info"]
        client.zadd("unacked_index", {"stranded-test-tag": time.time() - 10})
        client.hset("unacked", "stranded-test-tag",
                    json.dumps([payload, info["exchange"], info["routing_key"]]))
        print(json.dumps([payload["headers"]["id"]]))
    elif what == "list":
        ids = [json.loads(client.lindex(k, i))["headers"]["id"]
               for k in keys for i in range(client.llen(k))]
        unacked = [json.loads(v)[0]["headers"]["id"] for v in client.hgetall("unacked").values()]
        print(json.dumps({"waiting": ids, "unacked": unacked}))
    else:
        client.delete(*keys)
        client.hdel("unacked", "stranded-test-tag")
        client.zrem("unacked_index", "stranded-test-tag")
        print("[]")
"""


def as_app(host, *args):
    return json.loads(run_as_app(host, APP, AS_APP, *args))


def folded(text: str) -> str:
    """Output with its whitespace folded (the YAML callback wraps long lines)."""
    return re.sub(r"\s+", " ", text)


def recorded_db(host) -> int:
    return json.loads(host.file(FACT).content_string)["broker"]["db"]


def test_a_broker_move_is_refused_then_moved_message_by_message(host):
    worker = f"{APP}-worker@{GROUP}.service"
    assert recorded_db(host) == 0
    host.run_expect([0], f"systemctl stop {worker}")
    try:
        refused_then_moved(host)
    except BaseException:
        # leave the host usable for the tests that follow: no test message, the group running
        for db in ("0", "1"):
            as_app(host, "clean", QUEUE, db)
        host.run(f"systemctl start {worker}")
        raise


def refused_then_moved(host):
    sent = as_app(host, "send", QUEUE, "0", "6")
    unacked = as_app(host, "unack", QUEUE, "0")
    assert unacked[0] in sent
    env_before = host.file(ENV_FILE).sha256sum
    fact_before = host.file(FACT).content_string

    refused, seconds = run_playbook("deploy.yml", "-e", json.dumps(ON_DB1), check=False)
    print(f"refused deploy: {seconds} s")
    out = folded(refused.stdout)
    assert refused.returncode != 0
    assert "deploy.yml would strand 6 queued messages" in out, refused.stdout[-3000:]
    assert f"broker 127.0.0.1:6379/0 -> 127.0.0.1:6379/1: {QUEUE} 5 waiting, 1 unacked" in out
    assert "playbooks/move-queues.yml" in out
    assert "celery_deploy_drop_queued: true" in out
    # said once (Ansible prints a failed task's message as an error line, then in its result)
    assert folded(refused.stdout.split("fatal:", 1)[1]).count("would strand 6 queued") == 1
    assert "sandbox-tinyq-password" not in refused.stdout
    # refused before any host changed: no broker play, the same environment and record
    assert "PLAY [Deploy the broker]" not in refused.stdout
    assert host.file(ENV_FILE).sha256sum == env_before
    assert host.file(FACT).content_string == fact_before

    # -vvv prints each task's module arguments unless no_log: the URL goes on stdin
    moved, seconds = run_playbook("move-queues.yml", "-vvv", "-e", json.dumps(ON_DB1))
    print(f"move-queues.yml: {seconds} s")
    arrived = as_app(host, "list", QUEUE, "1")
    left = as_app(host, "list", QUEUE, "0")
    # every message once on database 1 (the unacked one given back first), none left on 0
    assert collections.Counter(arrived["waiting"]) == collections.Counter(sent), moved.stdout[
        -3000:
    ]
    assert left == {"waiting": [], "unacked": []}
    assert "sandbox-tinyq-password" not in moved.stdout
    # the broker play ran before any worker stopped, and the new broker answered the app's user
    assert moved.stdout.index("PLAY [Deploy the broker]") < moved.stdout.index("Stop the app's")
    again, _ = run_playbook("move-queues.yml", "-e", json.dumps(ON_DB1))
    assert "Nothing queued would be stranded: nothing to move." in folded(again.stdout)

    deployed, seconds = run_playbook("deploy.yml", "-e", json.dumps(ON_DB1))
    print(f"deploy to database 1: {seconds} s")
    assert recorded_db(host) == 1
    assert wait_for(lambda: as_app(host, "list", QUEUE, "1")["waiting"] == [], 60)


def test_the_messages_may_be_dropped_when_the_user_says_so(host):
    """Back to database 0 (the scenario's inventory) with two messages left on database 1."""
    worker = f"{APP}-worker@{GROUP}.service"
    assert recorded_db(host) == 1
    host.run_expect([0], f"systemctl stop {worker}")
    try:
        sent = as_app(host, "send", QUEUE, "1", "2")
        dropped, seconds = run_playbook(
            "deploy.yml", "-e", json.dumps({"celery_deploy_drop_queued": True})
        )
        print(f"deploy back to database 0, dropping: {seconds} s")
        out = folded(dropped.stdout)
        assert "deploy.yml leaves behind 2 queued messages" in out
        assert "celery_deploy_drop_queued is true: they stay where they are, unread." in out
        assert recorded_db(host) == 0
        assert host.service(worker).is_running
        assert sorted(as_app(host, "list", QUEUE, "1")["waiting"]) == sorted(sent)
    finally:
        as_app(host, "clean", QUEUE, "1")
        host.run_expect([0], f"systemctl start {worker}")
