"""The toolkit's Celery exporter: what no packaged exporter says about the app's queues, its
`unacked` tasks and its worker groups, in Prometheus's text format. Run as the app, with the
app's environment (its broker URL, TLS CA and Redis ACL user), from the app's release venv.

  celery_exporter.py serve CONFIG   serve /metrics on CONFIG's address and port; a thread
                                    collects every `interval` seconds, a scrape never waits on
                                    the broker (roles/celery_exporter)
  celery_exporter.py once SPEC      collect the broker's figures once and print them as JSON,
                                    "lines" for a status table (playbooks/verify.yml; SPEC is
                                    the JSON text of {"queues": [...]})

CONFIG (JSON, written by roles/celery_exporter): {"address", "port", "interval", "queues": every
queue of the fleet's layout and of the app's routes, "groups": {group: [queues]} of this host,
"node": how the host's process manager names a group's Celery node ("{group}@{host}")}.

The keys are kombu's Redis transport's own (read from the app's channel, so its transport
options hold: priority_steps, sep, unacked_key, unacked_index_key, global_keyprefix): a queue is
one list per priority step ("<queue>", "<queue>\\x06\\x163", ...), LPUSHed and BRPOPed from the
right; `unacked` is a hash of the messages delivered and not acknowledged, `unacked_index` a
sorted set of their delivery times.

Oldest waiting message: a message carries no publish time. Each collection notes, per list, the
newest message (LINDEX 0) and when it was seen. The oldest noted one still in the list (LPOS) was
pushed after the head (LINDEX -1) or is the head, so the head was pushed at or before that
note's time and after the note before it (whose message is gone): the age is a lower bound, at
most one interval short. A message pushed before the exporter (re)started counts from its first
collection. Redis commands: LLEN, LINDEX, LPOS, HLEN, ZRANGE, and Celery's control (ping,
active_queues) for the consumers and groups.

Never a traceback in normal failure: a broker that does not answer is celery_exporter_broker_up 0
and one line on stderr.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONTROL_TIMEOUT = 1.0  # seconds the control API waits for the nodes' replies (as celery_status.py)
HISTORY_LIMIT = 4096  # noted newest messages kept per list (beyond: the age is a lower bound)


class QueueAges:
    """Per list: the newest messages noted at each collection, oldest first, while still queued."""

    def __init__(self) -> None:
        self.notes: dict[str, list[tuple[float, bytes]]] = {}

    def observe(self, key: str, length: int, head, newest, now: float, present) -> float | None:
        """The time the list's head was pushed at the latest (None: the list is empty).
        `present(element)` says whether an element is still in the list (LPOS)."""
        notes = self.notes.setdefault(key, [])
        if not length or head is None or newest is None:
            notes.clear()
            return None
        if not notes or notes[-1][1] != newest:
            notes.append((now, newest))
            del notes[:-HISTORY_LIMIT]
        if notes[0][1] != head:
            # FIFO: the notes still queued are the newest ones; find the first (the last is queued)
            low, high = 0, len(notes) - 1
            while low < high:
                middle = (low + high) // 2
                if present(notes[middle][1]):
                    high = middle
                else:
                    low = middle + 1
            del notes[:low]
        return notes[0][0]


def _keys(channel, queue: str) -> list[str]:
    """The Redis keys of a queue (one per priority step), as kombu names them."""
    prefix = getattr(channel, "global_keyprefix", "") or ""
    steps = getattr(channel, "priority_steps", None) or [0]
    return list(dict.fromkeys(prefix + channel._q_for_pri(queue, step) for step in steps))


def collect_broker(app, queues: list, ages: QueueAges) -> dict:
    """Queue lengths and their oldest message's push time, `unacked` and its oldest delivery."""
    import redis  # kombu's Redis transport needs it: the app has it

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.default_channel
        prefix = getattr(channel, "global_keyprefix", "") or ""
        # a client without kombu's key prefixing (it prefixes some commands only): the keys are
        # prefixed here, each once
        client = redis.Redis(connection_pool=channel.client.connection_pool)
        keys = {queue: _keys(channel, queue) for queue in queues}
        pipe = client.pipeline(transaction=False)
        for queue in queues:
            for key in keys[queue]:
                pipe.llen(key).lindex(key, -1).lindex(key, 0)
        pipe.hlen(prefix + channel.unacked_key)
        pipe.zrange(prefix + channel.unacked_index_key, 0, 0, withscores=True)
        answers = pipe.execute()
        now = time.time()
        figures = {"queues": {}, "unacked": answers[-2], "unacked_oldest": None}
        index = 0
        for queue in queues:
            total, pushed = 0, []
            for key in keys[queue]:
                length, head, newest = answers[index : index + 3]
                index += 3
                total += length

                def present(element, key=key):
                    return client.execute_command("LPOS", key, element, "RANK", -1) is not None

                since = ages.observe(key, length, head, newest, now, present)
                if since is not None:
                    pushed.append(since)
            figures["queues"][queue] = {
                "messages": total,
                "oldest": min(pushed) if pushed else None,
            }
        if answers[-1]:
            figures["unacked_oldest"] = float(answers[-1][0][1])
    return figures


def collect_nodes(app, groups: dict, node: str, queues: list) -> dict:
    """Consumers per queue (fleet-wide) and whether each group of this host is healthy."""
    from celery_status import judge_group  # beside this file (roles/celery_workers/files)

    inspect = app.control.inspect(timeout=CONTROL_TIMEOUT)
    pings = inspect.ping() or {}
    actives = inspect.active_queues() or {}
    consumers = dict.fromkeys(queues, 0)
    for answered in actives.values():
        for name in {q.get("name") for q in answered or []}:
            consumers[name] = consumers.get(name, 0) + 1
    host = socket.gethostname()
    up = {}
    for group, want in groups.items():
        name = node.format(group=group, host=host)
        up[group] = judge_group(name, want, pings.get(name), actives.get(name))["ok"]
    return {"consumers": consumers, "groups": up}


class Exporter:
    def __init__(self, app, config: dict) -> None:
        self.app, self.config = app, config
        self.ages = QueueAges()
        self.lock = threading.Lock()
        self.broker: dict | None = None
        self.nodes: dict | None = None
        self.last_success = 0.0
        self.last_attempt = 0.0
        self.duration = 0.0
        self.error = ""

    def collect_once(self) -> None:
        started = time.time()
        try:
            broker = collect_broker(self.app, self.config["queues"], self.ages)
            nodes = collect_nodes(
                self.app, self.config["groups"], self.config["node"], self.config["queues"]
            )
        except Exception as exc:  # the broker is down or refuses: broker_up 0, one line
            error = f"{type(exc).__name__}: {exc}"
            if error != self.error:
                print(f"celery_exporter: collection failed: {error}", file=sys.stderr, flush=True)
            with self.lock:
                self.broker, self.nodes, self.error = None, None, error
                self.last_attempt, self.duration = started, time.time() - started
            return
        if self.error:
            print("celery_exporter: the broker answers again", file=sys.stderr, flush=True)
        with self.lock:
            self.broker, self.nodes, self.error = broker, nodes, ""
            self.last_success = self.last_attempt = started
            self.duration = time.time() - started

    def loop(self) -> None:
        interval = float(self.config["interval"])
        while True:
            started = time.monotonic()
            self.collect_once()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))

    def render(self) -> str:
        with self.lock:
            broker, nodes = self.broker, self.nodes
            last_success, duration = self.last_success, self.duration
        now = time.time()
        # stale data counts as down: no collection succeeded within three intervals
        up = broker is not None and now - last_success <= 3 * float(self.config["interval"]) + 10
        out: list[str] = []

        def metric(name: str, kind: str, text: str, samples: list[tuple[dict, float]]) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                out.append(f"{name}{{{label_text}}} {value:g}" if labels else f"{name} {value:g}")

        metric(
            "celery_exporter_broker_up",
            "gauge",
            "1 when the last collection reached the broker.",
            [({}, 1 if up else 0)],
        )
        metric(
            "celery_exporter_last_success_timestamp_seconds",
            "gauge",
            "When the last collection that reached the broker started (0: none yet).",
            [({}, round(last_success, 3))],
        )
        metric(
            "celery_exporter_collection_duration_seconds",
            "gauge",
            "How long the last collection took.",
            [({}, round(duration, 3))],
        )
        groups = sorted(self.config["groups"])
        group_up = (nodes or {}).get("groups", {}) if up else {}
        metric(
            "celery_group_up",
            "gauge",
            "Per worker group of this host: 1 when its node answers a ping and consumes exactly "
            "its queues.",
            [({"group": g}, 1 if group_up.get(g) else 0) for g in groups],
        )
        if up:
            queues = broker["queues"]
            metric(
                "celery_queue_messages",
                "gauge",
                "Messages waiting in the queue (kombu's priority lists summed).",
                [({"queue": q}, queues[q]["messages"]) for q in sorted(queues)],
            )
            metric(
                "celery_queue_oldest_message_age_seconds",
                "gauge",
                "Age of the oldest waiting message (a lower bound, at most one interval short; "
                "0 if none).",
                [({"queue": q}, _age(now, queues[q]["oldest"])) for q in sorted(queues)],
            )
            consumers = nodes["consumers"]
            metric(
                "celery_queue_consumers",
                "gauge",
                "Celery nodes consuming the queue (fleet-wide).",
                [({"queue": q}, consumers.get(q, 0)) for q in sorted(queues)],
            )
            metric(
                "celery_unacked_messages",
                "gauge",
                "Messages delivered and not acknowledged (kombu's unacked hash).",
                [({}, broker["unacked"])],
            )
            metric(
                "celery_unacked_oldest_age_seconds",
                "gauge",
                "Age of the oldest unacked delivery (unacked_index; 0 if none).",
                [({}, _age(now, broker["unacked_oldest"]))],
            )
        return "\n".join(out) + "\n"


def _age(now: float, since: float | None) -> float:
    return round(max(0.0, now - since), 3) if since is not None else 0.0


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def serve(config_path: str) -> int:
    from celery.app.utils import find_app

    with open(config_path, encoding="utf-8") as handle:
        config = json.load(handle)
    app = find_app(os.environ["CELERY_APP"])
    exporter = Exporter(app, config)
    threading.Thread(target=exporter.loop, daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404, "see /metrics")
                return
            body = exporter.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # a scrape every few seconds is no news
            pass

    address = config["address"]
    server_class = ThreadingHTTPServer
    if ":" in address:

        class Server6(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = Server6
    server = server_class((address, int(config["port"])), Handler)
    print(
        f"celery_exporter: serving /metrics on {address}:{config['port']}",
        file=sys.stderr,
        flush=True,
    )
    server.serve_forever()
    return 0


def read_metrics(url: str) -> dict:
    """The running exporter's figures (its /metrics at `url`): name -> {label value: value}."""
    from urllib.request import urlopen

    figures: dict = {}
    with urlopen(url, timeout=5) as answer:  # noqa: S310 (the exporter's own http:// URL)
        for line in answer.read().decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name, _, labels = name_labels.partition("{")
            label = labels.rstrip("}").partition('="')[2].rstrip('"') if labels else ""
            figures.setdefault(name, {})[label] = float(value)
    return figures


def once(spec_text: str) -> int:
    """verify.yml's figures, as JSON with status-table lines: the running exporter's (`url`),
    else one collection of the broker's (then no age: it needs a history)."""
    spec = json.loads(spec_text)
    try:
        if spec.get("url"):
            try:
                metrics = read_metrics(spec["url"])
            except OSError as exc:
                metrics = {"error": str(exc)}
            if metrics.get("celery_exporter_broker_up", {}).get("") == 1:
                counts, ages = (
                    metrics["celery_queue_messages"],
                    metrics["celery_queue_oldest_message_age_seconds"],
                )
                lines = [
                    f"queue  {q:<12} {counts[q]:g} waiting, oldest {ages.get(q, 0):g} s"
                    for q in sorted(counts)
                ] + [
                    f"unacked {metrics['celery_unacked_messages']['']:g} entries, oldest delivered "
                    f"{metrics['celery_unacked_oldest_age_seconds']['']:g} s ago"
                ]
                print(json.dumps({"ok": True, "source": spec["url"], "lines": lines}))
                return 0
        from celery.app.utils import find_app

        app = find_app(os.environ["CELERY_APP"])
        figures = collect_broker(app, spec["queues"], QueueAges())
    except Exception as exc:
        print(json.dumps({"ok": False, "lines": [f"queues {type(exc).__name__}: {exc}"]}))
        return 0
    lines = [
        f"queue  {q:<12} {f['messages']} waiting, oldest ? (no exporter running)"
        for q, f in sorted(figures["queues"].items())
    ] + [
        f"unacked {figures['unacked']} entries, oldest delivered "
        f"{_age(time.time(), figures['unacked_oldest']):g} s ago"
    ]
    print(json.dumps({"ok": True, "source": "broker", "lines": lines}))
    return 0


def main(argv: list[str]) -> int:
    # a source-tree app is imported from the folder it runs in, as `celery -A` does
    if os.getcwd() not in sys.path:
        sys.path.insert(1, os.getcwd())
    if len(argv) == 3 and argv[1] == "serve":
        return serve(argv[2])
    if len(argv) == 3 and argv[1] == "once":
        return once(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
