"""A producer of the reference app's ledger tasks, run on a worker VM as the app
(`refapp-run python load_app.py PREFIX OUT`) while the broker's primary is lost or switched
over: it publishes a task every 20 ms (every tenth to the slow group's queue) until OUT.stop
exists, and watches the ledger grow (the workers consuming) every 100 ms. It writes OUT (JSON):
the tokens whose publish returned (acknowledged), how many publishes failed, the longest time
between two acknowledged publishes and the longest time the ledger did not grow while tasks were
waiting (the queues not consumed). The test then reads the ledger: every acknowledged token must
have run, once.

Both go through the app's own connections: the sentinels name the primary, again after a
failover. A publish that raises is counted as failed and not retried here (a producer is told).
"""

import json
import os
import sys
import threading
import time

from refapp import app
from refapp.tasks.ledger import LEDGER_KEY, record_fast, record_slow

prefix, out = sys.argv[1], sys.argv[2]
stop = out + ".stop"
done = threading.Event()
growth: list[float] = []  # when the ledger was seen to grow


def watch() -> None:
    conn = app.connection_for_write()
    seen = -1
    while not done.is_set():
        try:
            count = conn.default_channel.client.hlen(LEDGER_KEY)
        except Exception:  # the primary lost: kombu's client asks the sentinels again
            time.sleep(0.1)
            continue
        if count > seen:
            if seen >= 0:
                growth.append(time.monotonic())
            seen = count
        time.sleep(0.1)


watcher = threading.Thread(target=watch, daemon=True)
watcher.start()
acked: list[str] = []
failed = 0
sent = 0
last_ack = time.monotonic()
longest_publish_gap = 0.0
while not os.path.exists(stop):
    token = f"{prefix}-{sent}"
    task = record_slow if sent % 10 == 9 else record_fast
    sent += 1
    try:
        task.delay(token)
    except Exception:  # noqa: BLE001 - any refusal is a failed publish
        failed += 1
    else:
        now = time.monotonic()
        longest_publish_gap = max(longest_publish_gap, now - last_ack)
        last_ack = now
        acked.append(token)
    time.sleep(0.02)
# the last tasks run within a few seconds: the stall is measured while they were queued
time.sleep(5)
done.set()
watcher.join(5)
stalls = [b - a for a, b in zip(growth, growth[1:], strict=False)]
result = {
    "sent": sent,
    "acked": acked,
    "failed": failed,
    "longest_publish_gap_s": round(longest_publish_gap, 2),
    "longest_stall_s": round(max(stalls, default=0.0), 2),
}
with open(out + ".new", "w") as handle:
    json.dump(result, handle)
os.replace(out + ".new", out)
