"""A producer of the reference app's ledger tasks, run on a worker VM as the app
(`refapp-run python load_app.py PREFIX OUT`) while the broker's primary is lost or switched
over: it publishes a task every 20 ms (every tenth to the slow group's queue) until OUT.stop
exists. It writes OUT (JSON): the tokens whose publish returned (acknowledged) and when, how many
publishes failed, the longest time between two acknowledged publishes. The test then reads the
ledger: every acknowledged token must have run, once; when each ran (refapp:ledger:ran) gives
the longest time nothing ran (the queues not consumed).

It publishes through the app's own connections: the sentinels name the primary, again after a
failover. A publish that raises is counted as failed and not retried here (a producer is told).
"""

import json
import os
import sys
import time

from refapp.tasks.ledger import record_fast, record_slow

prefix, out = sys.argv[1], sys.argv[2]
stop = out + ".stop"
acked: list[list] = []  # [token, when its publish returned (the VM's clock: the host's)]
failed = 0
errors: dict[str, int] = {}  # what the refused publishes were told
sent = 0
last_ack = time.monotonic()
longest_publish_gap = 0.0
while not os.path.exists(stop):
    token = f"{prefix}-{sent}"
    task = record_slow if sent % 10 == 9 else record_fast
    sent += 1
    try:
        task.delay(token)
    except Exception as exc:  # noqa: BLE001 - any refusal is a failed publish
        failed += 1
        said = f"{type(exc).__name__}: {exc}"[:120]
        errors[said] = errors.get(said, 0) + 1
    else:
        now = time.monotonic()
        longest_publish_gap = max(longest_publish_gap, now - last_ack)
        last_ack = now
        acked.append([token, time.time()])
    time.sleep(0.02)
result = {
    "sent": sent,
    "acked": acked,
    "failed": failed,
    "errors": errors,
    "longest_publish_gap_s": round(longest_publish_gap, 2),
}
with open(out + ".new", "w") as handle:
    json.dump(result, handle)
os.replace(out + ".new", out)
