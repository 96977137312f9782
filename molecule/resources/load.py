"""The tests' one sender of the reference app's ledger tasks (SEND: every scenario and
benchmark that loads a fleet runs it on a host as the app), and a mixed load of them sent across
a playbook run (rollback.yml, a deploy that changes the layout or the process manager) with the
check that every task of it ran exactly once: shared by the rollback and supervisor scenarios'
tests."""

import json
import time
from pathlib import PurePosixPath

from playbook_runner import LEDGER, record_figure, run_playbook, wait_until_ran

# 300 fast tasks of 0.2 s keep the fast group (4 processes) busy ~15 s, across the switch;
# 6 slow tasks of 4 s keep the slow group busy (one runs while rollback.yml stops it).
N_FAST, N_SLOW, FAST_SECONDS, SLOW_SECONDS = 300, 6, 0.2, 4

# Runs on a host as the app (<app>-run python -c SEND PREFIX N SECONDS [N_SLOW SLOW_SECONDS]):
# N_SLOW slow ledger tasks (tokens PREFIX-slow-<i>, queue low) first, then N fast ones (tokens
# PREFIX-<i>, queue high), each running its SECONDS. LEDGER (playbook_runner) reads them back.
SEND = """
import sys
from refapp.tasks.ledger import record_fast, record_slow
prefix, n_fast, fast_seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
n_slow, slow_seconds = (int(sys.argv[4]), float(sys.argv[5])) if len(sys.argv) > 4 else (0, 0)
for i in range(n_slow):
    record_slow.delay(f"{prefix}-slow-{i}", slow_seconds)
for i in range(n_fast):
    record_fast.delay(f"{prefix}-{i}", fast_seconds)
"""


def as_app(host, script, *args):
    quoted = " ".join(f"'{a}'" for a in args)
    return host.check_output(f"refapp-run python -c '{script.replace(chr(39), chr(34))}' {quoted}")


def current_release(host):
    """The release the app's `current` link points at (its folder's name)."""
    return PurePosixPath(host.file("/opt/refapp/current").linked_to).name


def playbook(name, *extra):
    proc, seconds = run_playbook(name, *extra)
    return proc.stdout, seconds


def state(host, prefix):
    return json.loads(as_app(host, LEDGER, prefix))


def switch_under_load(host, prefix, name, *extra, figures="rollback-figures.json"):
    as_app(host, SEND, prefix, str(N_FAST), str(FAST_SECONDS), str(N_SLOW), str(SLOW_SECONDS))
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
    expected = {f"{prefix}-{i}" for i in range(N_FAST)}
    expected |= {f"{prefix}-slow-{i}" for i in range(N_SLOW)}
    ledger = after["ledger"]
    missing = sorted(expected - set(ledger))
    twice = sorted(token for token, count in ledger.items() if count != 1)
    assert not missing, f"{len(missing)} tasks never ran: {missing[:10]}"
    assert not twice, f"{len(twice)} tasks ran more than once: {twice[:10]}"
    assert set(ledger) == expected
