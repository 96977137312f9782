"""A client of the replicated broker, run on a broker VM with the system's Python: it asks the
sentinels for the primary (as kombu does), LPUSHes a number every 20 ms and notes each one the
primary acknowledged; on an error it asks the sentinels again. Stops when OUT.stop exists and
writes OUT (JSON): sent, acked, errors, the longest time between two acknowledged writes.

    python3 writer.py KEY OUT
"""

import json
import os
import sys
import time

sys.path.insert(0, "/usr/local/lib/celery-toolkit")
from redis_switchover import Node, Refused, primary_by_majority  # noqa: E402

with open("/etc/redis/celery-toolkit-switchover.json", encoding="utf-8") as handle:
    CONFIG = json.load(handle)
key, out = sys.argv[1], sys.argv[2]
acked, errors, sent, node = [], 0, 0, None
last, longest = time.monotonic(), 0.0
while not os.path.exists(out + ".stop"):
    sent += 1
    try:
        if node is None:
            host, port = primary_by_majority(CONFIG)
            node = Node(host, port, CONFIG["node_auth"], None, timeout=2)
        node.call("LPUSH", key, sent)
        acked.append(sent)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    except (OSError, Refused):
        errors += 1
        if node is not None:
            node.close()
            node = None
        time.sleep(0.2)
    time.sleep(0.02)
with open(out + ".tmp", "w", encoding="utf-8") as handle:
    json.dump({"sent": sent, "acked": acked, "errors": errors, "longest_gap_s": longest}, handle)
os.rename(out + ".tmp", out)
