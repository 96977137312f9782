"""Stranded tasks come back in seconds, not after the visibility timeout (2 hours for refapp).

Runs after test_default.py on the same converged host.
"""

import json
import re
import time
import uuid

import recovery_cases
from load import SEND
from playbook_runner import LEDGER, record_figure, run_playbook, wait_for

RUN = uuid.uuid4().hex[:8]
# A consumer that takes a task from `low` and dies before it acknowledges it (os._exit skips
# kombu's own give-back at close): the task stays in the broker's unacked hash.
STRAND = """
import os, sys
from refapp import app
from refapp.tasks.ledger import record_slow
result = record_slow.delay(sys.argv[1] + "-0", 0)  # the ledger reads PREFIX-<n> tokens
with app.connection_for_write() as conn:
    message = conn.default_channel.basic_get("low", no_ack=False)
    assert message is not None
    print(result.id, flush=True)
    os._exit(0)  # inside the with: leaving it would close the channel, which gives it back
"""


def as_app(host, script, *args):
    quoted = " ".join(f"'{a}'" for a in args)
    return host.check_output(f"refapp-run python -c '{script.replace(chr(39), chr(34))}' {quoted}")


def ledger(host, prefix):
    return json.loads(as_app(host, LEDGER, prefix))["ledger"]


def flat(text):
    return re.sub(r"\s+", " ", text)


def test_kill_9_of_a_worker_leaves_no_task_stranded(host):
    """kill -9 of the fast group's main process with 10 tasks of 4 s in flight: every task runs
    (at least once: a task a pool child finished after its parent died was never acknowledged)
    within minutes, not after the 2-hour visibility timeout."""
    prefix, n = f"kill9-{RUN}", 10
    as_app(host, SEND, prefix, str(n), "4")
    assert wait_for(lambda: int(active_count(host)) >= 4, 30), "the fast group did not start"
    pid = host.check_output("systemctl show -p MainPID --value refapp-worker@fast")
    killed = time.monotonic()
    host.run_expect([0], f"kill -9 {pid}")
    ran = wait_for(lambda: len(ledger(host, prefix)) == n, 180)
    seconds = round(time.monotonic() - killed, 1)
    runs = ledger(host, prefix)
    record_figure(
        "recover-figures.json",
        "kill -9 of fast's main process, 10 tasks of 4 s",
        {"all_ran_after_s": seconds, "ran_twice": sum(1 for c in runs.values() if c > 1)},
    )
    assert ran, f"{n - len(runs)} of {n} tasks never ran in 180 s: {sorted(runs)}"
    log = host.check_output("journalctl -u refapp-worker@fast -o cat -n 200")
    assert re.search(r"requeued \S+ refapp\.tasks\.ledger\.record_fast -> high", log), log[-3000:]


def active_count(host):
    return host.check_output(
        "refapp-run celery -A refapp inspect active -d fast@$(hostname) -j 2>/dev/null"
        " | python3 -c 'import json,sys; print(sum(len(v) for v in json.load(sys.stdin).values()))'"
        " || echo 0"
    )


def test_recover_playbook_gives_back_a_stranded_task_once(host):
    token = f"strand-{RUN}"
    host.run_expect([0], "systemctl stop refapp-worker@slow")  # nobody consumes `low`
    try:
        task_id = as_app(host, STRAND, token).strip()
    finally:
        host.run_expect([0], "systemctl start refapp-worker@slow")
    dry, _ = run_playbook("recover.yml", "-e", "celery_recover_dry_run=true")
    out = flat(dry.stdout)  # the YAML callback folds long lines
    assert f"would requeue {task_id} refapp.tasks.ledger.record_slow -> low" in out, out[-2000:]
    assert "dry run: nothing changed" in out
    assert ledger(host, token) == {}
    real, _ = run_playbook("recover.yml")
    out = flat(real.stdout)
    assert f"requeued {task_id} refapp.tasks.ledger.record_slow -> low" in out, out[-2000:]
    assert wait_for(lambda: ledger(host, token) == {f"{token}-0": 1}, 60), ledger(host, token)
    again, _ = run_playbook("recover.yml")
    assert task_id not in again.stdout
    recap = [
        line for line in again.stdout.splitlines() if line.startswith("celery-toolkit-default")
    ]
    assert recap and "changed=0" in recap[-1], recap


# -- issue 21: a live worker that does not list what it holds ---------------------------------


def recover_playbook():
    proc, _ = run_playbook("recover.yml")
    return flat(proc.stdout + proc.stderr)


def run_case(host, name):
    case = recovery_cases.CASES[name]
    out = case(host.check_output, recover_playbook, f"{name.replace(' ', '-')}-{RUN}")
    record_figure(
        "recover-figures.json",
        f"recovery during: {name}",
        {k: v for k, v in out.items() if k != "output"},
    )
    return out


def test_recovery_holds_back_a_rate_limited_task_waiting_for_its_token(host):
    """Celery's strategy hands a rate-limited task to the consumer's token bucket: it is in
    none of active, reserved, scheduled. The recovery holds it back, nothing runs twice."""
    out = run_case(host, "rate-limited")
    text = out["output"]
    assert re.search(
        r"held back \S+ refapp\.tasks\.ledger\.record_fast -> high: rate-limited in fast@", text
    ), text[-2000:]
    assert not re.search(r"requeued \S+ refapp", text), text[-2000:]
    assert (out["run_twice"], out["lost"]) == (0, 0), out


def test_recovery_waits_for_a_busy_solo_pool(host):
    """The solo group runs a 45 s task: it answers no inspect (the precondition), the
    recovery waits until it answers again instead of giving its task back."""
    out = run_case(host, "solo busy")
    assert out["silent"], "the busy solo group answered a ping: the case tests nothing"
    assert re.search(r"waited \d+ s for slow@\S+ \(alive, silent\)", out["output"]), out["output"][
        -2000:
    ]
    assert "0 of " in out["output"] or "no unacknowledged task" in out["output"], out["output"][
        -2000:
    ]
    assert (out["run_twice"], out["lost"]) == (0, 0), out


def test_recovery_waits_for_a_group_in_its_warm_shutdown(host):
    out = run_case(host, "warm shutdown")
    assert out["silent"], "the group in its warm shutdown answered a ping: the case tests nothing"
    assert re.search(r"waited \d+ s for fast@\S+ \(alive, silent\)", out["output"]), out["output"][
        -2000:
    ]
    assert (out["run_twice"], out["lost"]) == (0, 0), out


def test_recovery_refuses_while_a_worker_stays_silent_beyond_its_patience(host):
    """With a patience shorter than the solo group's task, the run refuses and says what to do;
    the task runs once."""
    token = f"patience-{RUN}"
    as_app(host, SEND, token, "0", "0", "1", "45")
    assert wait_for(
        lambda: not recovery_cases.answers(host.check_output, "slow@$(hostname)", 1), 20
    )
    proc, _ = run_playbook("recover.yml", "-e", "celery_recover_patience=3", check=False)
    out = flat(proc.stdout + proc.stderr)
    assert proc.returncode != 0, out[-2000:]
    assert re.search(r"slow@\S+: alive .* nothing given back", out), out[-2000:]
    assert "Run playbooks/recover.yml again once it answers" in out, out[-2000:]
    ledger_now = recovery_cases.settle(host.check_output, token, 1)
    assert ledger_now == {f"{token}-slow-0": 1}
