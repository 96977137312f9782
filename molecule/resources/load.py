"""A mixed load of the reference app's ledger tasks sent across a playbook run (rollback.yml,
a deploy that changes the layout or the process manager), and the check that every task of it
ran exactly once: shared by the rollback and supervisor scenarios' tests."""

import json
import time

from playbook_runner import LEDGER, record_figure, run_playbook, wait_until_ran

# 300 fast tasks of 0.2 s keep the fast group (4 processes) busy ~15 s, across the switch;
# 6 slow tasks of 4 s keep the slow group busy (one runs while rollback.yml stops it).
N_FAST, N_SLOW, FAST_SECONDS, SLOW_SECONDS = 300, 6, 0.2, 4

# Runs on the host as the app: send the load.
LOAD = """
import json, sys
from refapp import app
from refapp.tasks.ledger import record_fast, record_slow
prefix, n_fast, n_slow = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fast_seconds, slow_seconds = float(sys.argv[4]), float(sys.argv[5])
for i in range(n_slow):
    record_slow.delay(f"{prefix}-slow-{i}", slow_seconds)
for i in range(n_fast):
    record_fast.delay(f"{prefix}-fast-{i}", fast_seconds)
"""


def as_app(host, script, *args):
    quoted = " ".join(f"'{a}'" for a in args)
    return host.check_output(f"refapp-run python -c '{script.replace(chr(39), chr(34))}' {quoted}")


def playbook(name, *extra):
    proc, seconds = run_playbook(name, *extra)
    return proc.stdout, seconds


def state(host, prefix):
    return json.loads(as_app(host, LEDGER, prefix))


def switch_under_load(host, prefix, name, *extra, figures="rollback-figures.json"):
    as_app(host, LOAD, prefix, str(N_FAST), str(N_SLOW), str(FAST_SECONDS), str(SLOW_SECONDS))
    time.sleep(1)  # the slow group has started a task
    before = state(host, prefix)
    out, seconds = playbook(name, *extra)
    middle = state(host, prefix)
    after = wait_until_ran(lambda: state(host, prefix), N_FAST + N_SLOW, ["high", "default", "low"])
    record_figure(
        figures,
        name + ":" + prefix,
        {
            "seconds": seconds,
            "not_yet_run_at_start": N_FAST + N_SLOW - len(before["ledger"]),
            "queued_at_start": before["queued"],
            "not_yet_run_at_end": N_FAST + N_SLOW - len(middle["ledger"]),
        },
    )
    return out, after


def assert_exactly_once(after, prefix):
    expected = {f"{prefix}-fast-{i}" for i in range(N_FAST)}
    expected |= {f"{prefix}-slow-{i}" for i in range(N_SLOW)}
    ledger = after["ledger"]
    missing = sorted(expected - set(ledger))
    twice = sorted(token for token, count in ledger.items() if count != 1)
    assert not missing, f"{len(missing)} tasks never ran: {missing[:10]}"
    assert not twice, f"{len(twice)} tasks ran more than once: {twice[:10]}"
    assert set(ledger) == expected
