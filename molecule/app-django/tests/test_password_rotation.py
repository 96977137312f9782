"""Rotating the broker's passwords under load, as README "Rotating the broker password" says an
operator does it (issue 21): the administrator's (redis_password) and both ACL users' (the app's
`shop`, Flower's `shop-flower`).

A producer OUTSIDE the fleet (a container of its own, in no group of the inventory, sharing the
broker host's network to reach Redis on loopback) publishes `orders.tasks.tally` throughout,
each publish a new connection that logs in (so each one meets the passwords Redis accepts at
that moment) with kombu told not to retry (max_retries 0, retry=False): a refused login is a
refused publish, counted. Its broker URL is a file it reads before each publish, as an operator
changes a producer's configuration.

1. deploy with the new passwords and the old ones as redis_password_previous / previous_password,
   the URLs new: Redis takes both live, the fleet rolls to the new ones host by host;
2. the producer's URL file gets the new password;
3. deploy without the previous passwords: Redis drops them live.

Redis is never restarted (same PID), no publish is refused, every published task runs exactly
once (the workers' journal: one `succeeded` line per task id), the old passwords are refused
afterwards and verify.yml passes. The host keeps the rotated passwords: this module runs after
every other test of the scenario (conftest.py orders it last), so no rotation back is needed.
Figures: .cache/rotation-figures.json, docs/benchmarks.md.
"""

import json
import re
import secrets
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from playbook_runner import record_figure, run_playbook, wait_for

CONTAINER = "celery-toolkit-app-django"
APP = "shop"
PRODUCER = "celery-toolkit-app-django-producer"
LABEL = "io.github.celery-toolkit.project=molecule-app-django"
IMAGE = "celery-toolkit/debian:bookworm"

# The producer: Debian's python3-celery (a Celery of its own, not the app's release), one new
# connection per publish, no retry. argv: URL_FILE PREFIX OUT_FILE STOP_FILE [once]
PRODUCE = r"""
import json, os, signal, sys, time
from celery import Celery
from kombu import Connection

url_file, prefix, out_file, stop_file = sys.argv[1:5]
once = len(sys.argv) > 5
app = Celery("producer")
sent, refused, started = [], [], time.time()

class Hung(Exception):
    pass

def hung(*_):
    raise Hung("no answer within 20 s (a client that retries?)")

signal.signal(signal.SIGALRM, hung)

def write(done):
    tmp = out_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"sent": sent, "refused": refused, "done": done,
                   "seconds": round(time.time() - started, 1)}, f)
    os.replace(tmp, out_file)

i = 0
while True:
    with open(url_file) as f:
        url = f.read().strip()
    task_id = f"{prefix}-{i}"
    i += 1
    signal.alarm(20)
    try:
        with Connection(url, transport_options={"max_retries": 0}, connect_timeout=5) as conn:
            app.send_task("orders.tasks.tally", args=(i, 1), task_id=task_id, queue="celery",
                          connection=conn, retry=False)
        sent.append(task_id)
    except Exception as exc:
        refused.append([task_id, f"{type(exc).__name__}: {str(exc)[:200]}"])
    finally:
        signal.alarm(0)
    if once or os.path.exists(stop_file):
        break
    if i % 10 == 0:
        write(False)
    time.sleep(0.1)
write(True)
"""


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def url(user: str, password: str) -> str:
    return f"redis://{user}:{password}@127.0.0.1:6379/0"


def redis_pid(host) -> str:
    return host.check_output(
        "systemctl show -p MainPID -p ExecMainStartTimestampMonotonic --value redis-server"
    )


def login(host, user: str, password: str) -> str:
    """AUTH on redis-cli's stdin (never argv): OK, or Redis's refusal."""
    script = f"AUTH {user} {password}\nPING\n"
    out = host.run("printf %s " + shlex.quote(script) + " | redis-cli -h 127.0.0.1")
    return out.stdout.splitlines()[0] if out.stdout else out.stderr


def succeeded(host, prefix: str) -> dict[str, int]:
    """Task id -> how many times a worker logged it as succeeded (the journal of the group
    consuming `celery`)."""
    out = host.check_output(
        f"journalctl -u {APP}-worker@main -o cat --no-pager"
        f" | grep -F 'orders.tasks.tally[{prefix}-' || true"
    )
    counts: dict[str, int] = {}
    for task_id in re.findall(rf"tally\[({re.escape(prefix)}-\d+)\] succeeded", out):
        counts[task_id] = counts.get(task_id, 0) + 1
    return counts


def extra_vars(path: Path, users: list[dict], admin: str, previous: dict | None) -> Path:
    """The rotation's inventory change as an extra-vars file (mode 0600; never on a command line).
    `previous`: user name (or `admin`) -> its previous password, or None (step 3)."""
    previous = previous or {}
    acl = [
        {**u, **({"previous_password": previous[u["name"]]} if u["name"] in previous else {})}
        for u in users
    ]
    passwords = {u["name"]: u["password"] for u in users}
    data = {
        "redis_password": admin,
        "redis_password_previous": previous.get("admin", ""),
        "redis_acl_users": acl,
        "celery_app_broker_url": url("shop", passwords["shop"]),
        "flower_broker_url": url("shop-flower", passwords["shop-flower"]),
    }
    path.touch(mode=0o600)
    path.write_text(json.dumps(data))
    return path


def logins(host, old: dict, new: dict) -> dict:
    """(name, old or new) -> Redis's answer to AUTH with that password."""
    return {
        (name, which): login(host, name, passwords[name])
        for name in new
        for which, passwords in (("old", old), ("new", new))
    }


def rotate(host, tmp: Path, inventory: dict, old: dict, new: dict, on_rolled=None) -> dict:
    """Steps 1 and 3 (and, between them, on_rolled: the operator's producers get the new
    password). old/new: name (admin, shop, shop-flower) -> password. Returns the seconds and
    what Redis accepted after each step."""
    users = [dict(u) for u in inventory["redis_acl_users"]]
    with_new = [{**u, "password": new[u["name"]]} for u in users]
    pid = redis_pid(host)
    step1 = extra_vars(tmp / "step1.json", with_new, new["admin"], old)
    _, add_seconds = run_playbook("deploy.yml", "-e", f"@{step1}")
    both = logins(host, old, new)
    pid_after_add = redis_pid(host)
    if on_rolled:
        on_rolled()
    step3 = extra_vars(tmp / "step3.json", with_new, new["admin"], None)
    _, remove_seconds = run_playbook("deploy.yml", "-e", f"@{step3}")
    after = logins(host, old, new)
    return {
        "add_and_roll_seconds": add_seconds,
        "remove_seconds": remove_seconds,
        "both": both,
        "after": after,
        "pids": [pid, pid_after_add, redis_pid(host)],
        "step3": step3,
    }


@pytest.fixture(scope="module")
def rotation(host, tmp_path_factory):
    inventory = host.ansible.get_variables()
    original = {"admin": inventory["redis_password"]}
    original |= {u["name"]: u["password"] for u in inventory["redis_acl_users"]}
    rotated = {name: f"rotated-{name}-{secrets.token_hex(10)}" for name in original}
    tmp = tmp_path_factory.mktemp("rotation")
    tmp.chmod(0o755)
    (tmp / "produce.py").write_text(PRODUCE)
    url_file = tmp / "url"
    url_file.write_text(url("shop", original["shop"]))
    prefix = f"rot{secrets.token_hex(4)}"
    docker("rm", "-f", PRODUCER, check=False)
    # a container in no group of the inventory, on the broker host's network (Redis on loopback)
    docker(
        "run", "-d", "--name", PRODUCER, "--label", LABEL,
        f"--network=container:{CONTAINER}", "-v", f"{tmp}:/rot", "--entrypoint", "sh", IMAGE,
        "-c", "apt-get update -qq && apt-get install -y -qq --no-install-recommends "
        "python3-celery python3-redis >/dev/null && touch /rot/ready && sleep infinity",
    )  # fmt: skip
    try:
        assert wait_for(lambda: (tmp / "ready").exists(), 300), docker("logs", PRODUCER).stderr
        # the counter counts: a wrong password is one refused publish, at once (no retry)
        (tmp / "bad-url").write_text(url("shop", "not-the-password-0000"))
        docker("exec", PRODUCER, "python3", "/rot/produce.py", "/rot/bad-url", "bad",
               "/rot/bad.json", "/rot/none", "once")  # fmt: skip
        bad = json.loads((tmp / "bad.json").read_text())
        started = time.monotonic()
        docker("exec", "-d", PRODUCER, "python3", "/rot/produce.py", "/rot/url", prefix,
               "/rot/out.json", "/rot/stop")  # fmt: skip
        out = tmp / "out.json"
        assert wait_for(lambda: out.exists() and len(json.loads(out.read_text())["sent"]) >= 20, 60)

        def producers_get_the_new_password():
            # replaced in one step: the producer reads the file before each publish, and once
            # read it empty mid-write (kombu then tried amqp://localhost: "Connection refused")
            (tmp / "url.new").write_text(url("shop", rotated["shop"]))
            (tmp / "url.new").replace(url_file)
            time.sleep(5)  # publishes with the new password while Redis still accepts both

        result = rotate(host, tmp, inventory, original, rotated, producers_get_the_new_password)
        _, verify_seconds = run_playbook("verify.yml", "-e", f"@{result['step3']}")
        time.sleep(3)
        (tmp / "stop").touch()
        assert wait_for(lambda: json.loads(out.read_text())["done"], 60)
        produced = json.loads(out.read_text())
        produce_seconds = round(time.monotonic() - started, 1)
        wait_for(lambda: len(succeeded(host, prefix)) >= len(produced["sent"]), 180)
        time.sleep(3)  # a task run twice shows up by then
        ran = succeeded(host, prefix)
    finally:
        docker("rm", "-f", PRODUCER, check=False)
    record_figure(
        "rotation-figures.json",
        "app-django",
        {
            "published": len(produced["sent"]) + len(produced["refused"]),
            "refused": len(produced["refused"]),
            "lost": len(set(produced["sent"]) - set(ran)),
            "twice": sum(1 for n in ran.values() if n > 1),
            "producer_seconds": produce_seconds,
            "step1_add_and_roll_seconds": result["add_and_roll_seconds"],
            "step3_remove_seconds": result["remove_seconds"],
            "verify_seconds": verify_seconds,
        },
    )
    return {"bad": bad, "produced": produced, "ran": ran, "result": result}


def test_the_producer_counts_a_refused_publish(rotation):
    assert rotation["bad"]["sent"] == []
    assert len(rotation["bad"]["refused"]) == 1, rotation["bad"]
    assert "invalid username-password" in rotation["bad"]["refused"][0][1].lower() or (
        "WRONGPASS" in rotation["bad"]["refused"][0][1]
    ), rotation["bad"]


def test_no_publish_was_refused_during_the_rotation(rotation):
    produced = rotation["produced"]
    assert len(produced["sent"]) >= 100, produced["seconds"]
    assert produced["refused"] == [], produced["refused"][:5]


def test_every_published_task_ran_exactly_once(rotation):
    sent, ran = rotation["produced"]["sent"], rotation["ran"]
    lost = sorted(set(sent) - set(ran))
    twice = sorted(task for task, n in ran.items() if n > 1)
    assert not lost, f"{len(lost)} of {len(sent)} tasks never ran: {lost[:10]}"
    assert not twice, f"{len(twice)} tasks ran more than once: {twice[:10]}"
    assert set(ran) == set(sent)


def test_redis_was_never_restarted(rotation):
    pids = rotation["result"]["pids"]
    assert pids[0] == pids[1] == pids[2], pids


def test_both_passwords_open_between_the_steps_and_only_the_new_one_after(rotation):
    both, after = rotation["result"]["both"], rotation["result"]["after"]
    assert set(both.values()) == {"OK"}, both
    for (name, which), reply in after.items():
        if which == "new":
            assert reply == "OK", (name, reply)
        else:
            assert "WRONGPASS" in reply, (name, reply)
