"""Issue 21's three cases where a live worker holds tasks it does not list, each run with a
recovery in the middle: a rate-limited task waiting for its token, a solo pool busy for longer
than the recovery's inspect timeout, a group in its warm shutdown. Each returns what a user
would count: tasks sent, run twice, never run, and the recovery's output. Shared by
molecule/default/tests/test_recover.py (each case once) and tests/bench/recovery.py (N times).

`sh(command)` runs a shell command as root on the stack's host and returns its output;
`recover()` runs the recovery (recover.yml, or the helper on the host) and returns its output.
The host runs the default scenario's layout: fast (prefork, 4, queues high and default) and
slow (solo, queue low).
"""

import json
import time

from load import SEND
from playbook_runner import LEDGER

FAST_TASK = "refapp.tasks.ledger.record_fast"
FAST, SLOW = "fast@$(hostname)", "slow@$(hostname)"
UNACKED = """
from refapp import app
with app.connection_for_write() as conn:
    print(conn.default_channel.client.hlen("unacked"))
"""


def as_app(sh, script, *args):
    quoted = " ".join(f"'{a}'" for a in args)
    return sh(f"refapp-run python -c '{script.replace(chr(39), chr(34))}' {quoted}")


def celery(sh, *words):
    return sh("refapp-run celery -A refapp " + " ".join(words))


def answers(sh, node, timeout=2):
    """Whether `node` answers a ping within `timeout` s (a busy solo pool, a warm shutdown: no)."""
    out = sh(
        f"refapp-run celery -A refapp inspect ping -d {node} -t {timeout} -j 2>/dev/null || true"
    )
    return "pong" in out


def active(sh, node):
    out = sh(f"refapp-run celery -A refapp inspect active -d {node} -j 2>/dev/null || echo '{{}}'")
    try:
        return sum(len(tasks) for tasks in json.loads(out or "{}").values())
    except ValueError:
        return 0


def wait(predicate, timeout, every=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def settle(sh, prefix, n, timeout=180):
    """Wait until the n tokens ran, nothing is queued and `unacked` is empty (a task given back
    twice would run again by then), then 5 s more; return the counts."""

    def done():
        state = json.loads(as_app(sh, LEDGER, prefix))
        queued = any(state["queued"].values())
        return len(state["ledger"]) >= n and not queued and int(as_app(sh, UNACKED)) == 0

    wait(done, timeout, every=2)
    time.sleep(5)
    ledger = json.loads(as_app(sh, LEDGER, prefix))["ledger"]
    return ledger


def result(ledger, prefix, tokens, output, **extra):
    return {
        "tasks": len(tokens),
        "run_twice": sum(1 for t in tokens if ledger.get(t, 0) > 1),
        "lost": sum(1 for t in tokens if ledger.get(t, 0) == 0),
        "output": output,
        **extra,
    }


def rate_limited(sh, recover, prefix, n=5):
    """The fast group runs record_fast at 6/m (set at run time, as an operator would): the
    group takes all n at once and holds n-1 in its token bucket, listed by no inspect."""
    celery(sh, "control", "rate_limit", FAST_TASK, "6/m", "-d", FAST)
    try:
        as_app(sh, SEND, prefix, str(n), "0")
        time.sleep(2)
        output = recover()
        wait(lambda: len(json.loads(as_app(sh, LEDGER, prefix))["ledger"]) >= n, 90, every=2)
    finally:
        celery(sh, "control", "rate_limit", FAST_TASK, "0", "-d", FAST)
    tokens = [f"{prefix}-{i}" for i in range(n)]
    return result(settle(sh, prefix, n), prefix, tokens, output)


def solo_busy(sh, recover, prefix, seconds=45):
    """One slow task of `seconds` on the solo group, far longer than the 5 s inspect timeout:
    the group answers nothing while it runs."""
    as_app(sh, SEND, prefix, "0", "0", "1", str(seconds))
    wait(lambda: not answers(sh, SLOW, 1), 20)
    silent = not answers(sh, SLOW)
    output = recover()
    tokens = [f"{prefix}-slow-0"]
    return result(settle(sh, prefix, 1), prefix, tokens, output, silent=silent)


def warm_shutdown(sh, recover, prefix, n=4, seconds=40):
    """The fast group's main process gets SIGTERM (Celery's warm shutdown, without the unit's
    drain) with n tasks of `seconds` running: it stops answering and finishes them; systemd
    then starts it again (Restart=always)."""
    as_app(sh, SEND, prefix, str(n), str(seconds))
    wait(lambda: active(sh, FAST) >= n, 30)
    sh("kill -TERM $(systemctl show -p MainPID --value refapp-worker@fast)")
    wait(lambda: not answers(sh, FAST, 1), 10)
    silent = not answers(sh, FAST)
    output = recover()
    tokens = [f"{prefix}-{i}" for i in range(n)]
    ledger = settle(sh, prefix, n)
    wait(lambda: answers(sh, FAST), 60)  # back for the next case
    return result(ledger, prefix, tokens, output, silent=silent)


CASES = {"rate-limited": rate_limited, "solo busy": solo_busy, "warm shutdown": warm_shutdown}
