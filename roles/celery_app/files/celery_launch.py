"""Start a Celery worker whose Redis bookkeeping a full broker cannot refuse (issue 20):

    <release>/venv/bin/python celery_launch.py -A APP worker ...   (what `celery` takes)
    <release>/venv/bin/python celery_launch.py --check              (the deploy's check)

At `maxmemory` (noeviction) Redis refuses every write that may grow its memory, but a worker's
BRPOP still pops: kombu then records the popped message in `unacked` with `MULTI ZADD HSET`,
which is refused, and the message is in no list any more (lost; docs/benchmarks.md). Its acks
(`MULTI ZREM HDEL`) are refused too, so nothing frees memory until an operator does. This module
replaces those writes of kombu's Redis transport, and the Redis result backend's task-state
writes, by one script each whose shebang says `allow-oom` (Redis >= 7.0: scriptVerifyOOM in
script.c lets such a script write above the limit), then runs Celery's own main. So a popped
message is always recorded, every ack frees memory, a task's STARTED state (task_track_started)
is never refused, and the fleet unwedges by itself as its workers consume. Publishes are still
refused at the limit: producers see the error at once, nothing they were told was sent is lost.

Nothing changes in the app: the patch is made in the worker's process before Celery imports
the app (prefork's pool children are forked from it). The scripts are sent with EVALSHA (and
SCRIPT LOAD once), which the app's ACL user has for kombu's own scripts.

--check exits 1 with a message when the release's kombu or Celery lacks what is replaced here
(the deploy then keeps the running release); a worker started with such a release refuses to
start with the same message. A broker older than Redis 7.0 rejects the scripts: the worker
then warns once and writes as kombu does (no protection at maxmemory).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from time import sleep, time


def allow_oom(body: str) -> str:
    """A script Redis >= 7.0 runs above maxmemory (its shebang's flag); it answers 1 when done."""
    return f"#!lua flags=allow-oom\n{body}\nreturn 1\n"


UNINDEX = "redis.call('ZREM', KEYS[1], ARGV[1]) redis.call('HDEL', KEYS[2], ARGV[1])"
# KEYS: unacked_index, unacked; ARGV: score, delivery tag, [message, exchange, routing key]
APPEND = allow_oom(
    "redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2]) redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])"
)
# KEYS: unacked_index, unacked; ARGV: delivery tag
REMOVE = allow_oom(UNINDEX)
# KEYS: unacked_index, unacked, the queues; ARGV: delivery tag, the unacked entry as read,
# "1" to push leftmost, a payload per queue. Only if the entry is still the one read (what
# kombu's WATCH guarantees): pushed back, then removed from the indices.
RESTORE = allow_oom(
    "if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end\n"
    "local push = ARGV[3] == '1' and 'LPUSH' or 'RPUSH'\n"
    "for i = 3, #KEYS do redis.call(push, KEYS[i], ARGV[i + 1]) end\n" + UNINDEX
)
# KEYS: the task's meta key; ARGV: value, seconds to expire ("" = none). As RedisBackend._set.
STATE = allow_oom(
    "if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])\n"
    "else redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "redis.call('PUBLISH', KEYS[1], ARGV[1])"
)
# KEYS: the exchange's binding table, its permanent set; ARGV: the binding. As kombu's
# Channel._queue_bind for a queue without x-expires (a worker declares its queues at start).
BIND = allow_oom("redis.call('SADD', KEYS[1], ARGV[1]) redis.call('SADD', KEYS[2], ARGV[1])")

# What is replaced, with the parameters this module calls it with: a kombu or Celery that
# changed them is refused rather than patched blindly.
REPLACED = {
    "kombu.transport.redis:QoS.append": ["self", "message", "delivery_tag"],
    "kombu.transport.redis:QoS.ack": ["self", "delivery_tag"],
    "kombu.transport.redis:QoS.reject": ["self", "delivery_tag", "requeue"],
    "kombu.transport.redis:QoS.restore_by_tag": ["self", "tag", "client", "leftmost"],
    "kombu.transport.redis:QoS.restore_visible": ["self", "start", "num", "interval"],
    "kombu.transport.redis:Channel._do_restore_message": [
        "self",
        "payload",
        "exchange",
        "routing_key",
        "pipe",
        "leftmost",
    ],
    "kombu.transport.redis:Channel._size": ["self", "queue"],
    "kombu.transport.redis:Channel._has_queue": ["self", "queue", "kwargs"],
    "kombu.transport.redis:Channel._delete": [
        "self",
        "queue",
        "exchange",
        "routing_key",
        "pattern",
        "args",
        "kwargs",
    ],
    "kombu.transport.redis:Channel._refresh_bindings": ["self", "queues"],
    "kombu.transport.redis:Channel._queue_bind": [
        "self",
        "exchange",
        "routing_key",
        "pattern",
        "queue",
    ],
    "celery.backends.redis:RedisBackend._set": ["self", "key", "value", "expires"],
    # wrapped by configure() (issue 22) when the transport-option variables are set
    "celery.app.base:Celery._load_config": ["self"],
    # wrapped by hold_client() (issue 22): a channel closed after its connection was collected
    "kombu.transport.redis:Channel.__init__": ["self", "args", "kwargs"],
    "kombu.transport.redis:Channel.close": ["self"],
    # wrapped by sentinel_clients() (issue 22) when the broker is behind Sentinel
    "kombu.transport.redis:SentinelChannel.__init__": ["self", "args", "kwargs"],
    "kombu.transport.redis:Channel._put": ["self", "queue", "message", "kwargs"],
}
USED = {  # read, not replaced
    "kombu.transport.redis:Channel": [
        "unacked_key",
        "unacked_index_key",
        "global_keyprefix",
        "priority_steps",
        "_q_for_pri",
        "keyprefix_queue",
        "keyprefix_binding_permanent",
        "sep",
        "_binding_ttl",
        "_script_binding_deadlines",
        "typeof",
        "_disconnect_pools",
        "_get_message_priority",
    ],
    "kombu.transport.redis:REFRESH_BINDING": [],
    "kombu.transport.redis:Channel.conn_or_acquire": [],
    "kombu.transport.virtual:QoS.append": [],
    "kombu.transport.virtual:QoS.ack": [],
}

log = logging.getLogger("celery_launch")
_unsupported: list[str] = []  # the broker's refusal of the scripts, once seen
_sha: dict[str, str] = {}
_late_acks: list[tuple[list[str], str]] = []  # (keys, delivery tag) of acks the broker missed
# A popped message's entry in `unacked` is written this many times at most, the n-th retry after
# a pause of RECORD_PAUSE * (n - 1) s: 5 s of pauses, plus each connection's timeouts.
RECORD_ATTEMPTS = 6
RECORD_PAUSE = 0.5


def _resolve(name: str) -> object:
    import importlib

    module, _, path = name.partition(":")
    obj: object = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def problems() -> list[str]:
    """What the installed kombu and Celery lack of what this module replaces or reads."""
    out = []
    for name, params in {**REPLACED, **USED}.items():
        try:
            obj = _resolve(name)
        except (ImportError, AttributeError) as exc:
            out.append(f"{name}: missing ({exc})")
            continue
        if name.endswith(":Channel"):
            out += [f"{name}.{attr}: missing" for attr in params if not hasattr(obj, attr)]
        elif params and list(inspect.signature(obj).parameters) != params:
            out.append(f"{name}{inspect.signature(obj)}: expected ({', '.join(params)})")
    return out


def refusal(found: list[str]) -> str:
    import importlib.metadata as md

    versions = ", ".join(f"{p} {md.version(p)}" for p in ("kombu", "celery"))
    return (
        f"celery_launch: this release's {versions} lacks what the toolkit replaces so that a full "
        f"Redis (maxmemory) loses no message (issue 20): {'; '.join(found)}. Pin the kombu and "
        "celery the toolkit was tested with (kombu 5.7.0, celery 5.7.0) in the constraints file "
        "celery_app_constraints names, "
        "or update roles/celery_app/files/celery_launch.py for this kombu."
    )


def run_script(client, text: str, keys: list, args: list):
    """EVALSHA of TEXT (SCRIPT LOAD when Redis does not have it yet). None if the broker
    refuses the script itself (Redis < 7.0 has no shebang): the caller then does kombu's own."""
    from redis.exceptions import NoScriptError, ResponseError

    if _unsupported:
        return None
    sha = _sha.get(text)
    for _ in range(2):
        if sha is None:
            try:
                sha = _sha[text] = client.script_load(text)
            except ResponseError as exc:
                _unsupported.append(str(exc))
                log.warning(
                    "celery_launch: the broker refuses allow-oom scripts (%s): kombu's own "
                    "bookkeeping from now on, which a full Redis (maxmemory) refuses (issue 20; "
                    "Redis >= 7.0 needed)",
                    exc,
                )
                return None
        try:
            return client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:  # the broker restarted or its scripts were flushed
            sha = _sha[text] = None
    raise RuntimeError("celery_launch: Redis lost the script twice in a row")


def patch() -> None:
    """Replace kombu's QoS bookkeeping and the result backend's state write (see the docstring)."""
    from celery.backends import redis as backend
    from kombu.transport import redis as transport
    from kombu.transport import virtual
    from kombu.utils.encoding import bytes_to_str
    from kombu.utils.json import dumps, loads
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import OutOfMemoryError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    QoS, RedisBackend = transport.QoS, backend.RedisBackend
    original = {
        "append": QoS.append,
        "ack": QoS.ack,
        "reject": QoS.reject,
        "restore_by_tag": QoS.restore_by_tag,
        "restore_visible": QoS.restore_visible,
        "_set": RedisBackend._set,
        "_queue_bind": transport.Channel._queue_bind,
        "_refresh_bindings": transport.Channel._refresh_bindings,
    }
    # kombu's own script for a queue with x-expires (celery's pidbox queues), allowed at the limit
    refresh_binding = allow_oom(transport.REFRESH_BINDING)

    def keys(qos, *more: str) -> list[str]:
        # kombu's prefixing client prefixes the first key of an EVALSHA only (as kombu's own
        # binding scripts assume): the others carry the global prefix here
        prefix = qos.channel.global_keyprefix or ""
        return [qos.unacked_index_key, prefix + qos.unacked_key, *(prefix + k for k in more)]

    def append(self, message, delivery_tag):
        delivery = message.delivery_info
        entry = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        done = record(self, delivery_tag, entry)
        if done is None:
            return original["append"](self, message, delivery_tag)
        virtual.QoS.append(self, message, delivery_tag)
        try:  # after the popped message is recorded: nothing here may lose it
            finish_acks(self)
        except Exception as exc:  # noqa: BLE001 - restore_visible tries again in 10 s
            log.warning("celery_launch: %d late acks still to do (%s)", len(_late_acks), exc)

    def record(qos, delivery_tag, entry):
        """APPEND through the channel's pool, again on a fresh connection when the pool's held
        a closed one (issue 22): the message is popped already, only this process holds it.

        After the broker's primary is lost, the connection that pops (BRPOP) reconnects, through
        the sentinels, to the new primary; the pool's idle connections still name the old one, and
        redis-py's own retries reconnect them to whatever the sentinels named a moment before.
        kombu's write then fails and the popped message is in no list (1-3 per kill of a
        primary under load, docs/benchmarks.md). Each retry empties the pool first, so the next
        connection asks the sentinels again; ZADD and HSET of the same entry are idempotent."""
        for attempt in range(RECORD_ATTEMPTS):
            try:
                with qos.channel.conn_or_acquire() as client:
                    return run_script(client, APPEND, keys(qos), [time(), delivery_tag, entry])
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                if attempt + 1 == RECORD_ATTEMPTS:
                    log.error(
                        "celery_launch: message %s popped but not recorded in unacked after "
                        "%d attempts (%s): it is lost unless a producer sends it again",
                        delivery_tag,
                        RECORD_ATTEMPTS,
                        exc,
                    )
                    raise
                log.warning(
                    "celery_launch: recording %s again on a new connection (%s)", delivery_tag, exc
                )
                qos.channel.pool.disconnect()
                sleep(RECORD_PAUSE * attempt)
        return None  # not reached

    def remove(self, delivery_tag) -> bool:
        with self.channel.conn_or_acquire() as client:
            return run_script(client, REMOVE, keys(self), [delivery_tag]) is not None

    def finish_acks(qos) -> None:
        """The acks the broker's loss interrupted, done on the broker the worker reaches now."""
        if not _late_acks:
            return
        with qos.channel.conn_or_acquire() as client:
            while _late_acks:
                where, tag = _late_acks[0]
                if run_script(client, REMOVE, where, [tag]) is None:
                    return
                _late_acks.pop(0)

    def ack(self, delivery_tag):
        try:
            done = remove(self, delivery_tag)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # The task ran; its ack could not reach the broker (a switchover closed the
            # connection, the primary died). kombu would give the message back when the channel
            # closes, and it would run again: it is marked acked here, and its entry in `unacked`
            # removed through the next connection (finish_acks) before visibility_timeout.
            _late_acks.append((keys(self), delivery_tag))
            virtual.QoS.ack(self, delivery_tag)
            log.warning("celery_launch: ack of %s done later (%s)", delivery_tag, exc)
            return
        if not done:
            return original["ack"](self, delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag, requeue=False):
        if _unsupported:
            return original["reject"](self, delivery_tag, requeue)
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        elif not remove(self, delivery_tag):
            return original["reject"](self, delivery_tag, requeue)
        virtual.QoS.ack(self, delivery_tag)

    class Pushes:
        """Stands for the pipeline kombu's _do_restore_message pushes into: kombu still
        chooses the queues (bindings, priorities) and marks the message redelivered."""

        def __init__(self) -> None:
            self.queues: list[str] = []
            self.payloads: list[str] = []

        def lpush(self, queue, payload):
            self.queues.append(queue)
            self.payloads.append(payload)

        rpush = lpush

    def restore_by_tag(self, tag, client=None, leftmost=False):
        if _unsupported:
            return original["restore_by_tag"](self, tag, client, leftmost)
        with self.channel.conn_or_acquire(client) as conn:
            raw = conn.hget(self.unacked_key, tag)  # a read: never refused
            if raw is None:
                done = run_script(conn, REMOVE, keys(self), [tag])
            else:
                pushes = Pushes()
                M, EX, RK = loads(bytes_to_str(raw))
                self.channel._do_restore_message(M, EX, RK, pushes, leftmost)
                done = run_script(
                    conn,
                    RESTORE,
                    keys(self, *pushes.queues),
                    [tag, raw, "1" if leftmost else "0", *pushes.payloads],
                )
        if done is None:
            return original["restore_by_tag"](self, tag, client, leftmost)

    def restore_visible(self, start=0, num=10, interval=10):
        try:
            finish_acks(self)  # before entries older than visibility_timeout are given back
            return original["restore_visible"](self, start, num, interval)
        except OutOfMemoryError:  # its mutex (SET NX) at the limit: the next round sweeps
            log.debug("celery_launch: restore_visible skipped at maxmemory")

    def _set(self, key, value, expires=None):
        if expires is None:
            expires = self.expires
        if hasattr(expires, "total_seconds"):
            expires = int(expires.total_seconds())
        done = run_script(self.client, STATE, [key], [value, str(expires) if expires else ""])
        if done is None:
            return original["_set"](self, key, value, expires)

    # kombu sends these in a MULTI, which a full Redis refuses whole (reads and deletes too:
    # processCommand), and a worker that starts at the limit dies (its queues' lengths; the
    # reply queue mingle deletes): the same commands in a pipeline without MULTI are answered
    def each_priority(self, queue, command: str) -> list:
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            for pri in self.priority_steps:
                getattr(pipe, command)(self._q_for_pri(queue, pri))
            return pipe.execute()

    def _size(self, queue):
        return sum(n for n in each_priority(self, queue, "llen") if isinstance(n, int))

    def _has_queue(self, queue, **kwargs):
        return any(each_priority(self, queue, "exists"))

    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        self.auto_delete_queues.discard(queue)
        member = self.sep.join([routing_key or "", pattern or "", queue or ""])
        with self.conn_or_acquire(client=kwargs.get("client")) as client:
            client.srem(self.keyprefix_queue % (exchange,), member)
            client.srem(self.keyprefix_binding_permanent % (exchange,), member)
        each_priority(self, queue, "delete")

    def _refresh_bindings(self, queues):
        # kombu's binding script for each binding in a MULTI: one allow-oom script each
        with self.conn_or_acquire() as client:
            for queue in queues:
                for exchange, routing_key, args in self.state.queue_bindings(queue):
                    _, pattern, _ = self.typeof(exchange).prepare_bind(
                        queue, exchange, routing_key, args
                    )
                    member = self.sep.join([routing_key or "", pattern or "", queue])
                    keys = [self.keyprefix_queue % (exchange,), self._script_binding_deadlines]
                    argv = [member, exchange, self._binding_ttl(queue)]
                    if run_script(client, refresh_binding, keys, argv) is None:
                        return original["_refresh_bindings"](self, queues)

    def _queue_bind(self, exchange, routing_key, pattern, queue):
        if not isinstance(getattr(self, "_expires", None), dict):  # set in kombu 5.7's __init__
            return original["_queue_bind"](self, exchange, routing_key, pattern, queue)
        key = self.keyprefix_queue % (exchange,)
        member = self.sep.join([routing_key or "", pattern or "", queue or ""])
        with self.conn_or_acquire() as client:
            if queue in self._expires:
                done = run_script(
                    client,
                    refresh_binding,
                    [key, self._script_binding_deadlines],
                    [member, exchange, self._binding_ttl(queue)],
                )
            else:
                permanent = self.keyprefix_binding_permanent % (exchange,)
                prefix = self.global_keyprefix or ""
                done = run_script(client, BIND, [key, prefix + permanent], [member])
        if done is None:
            return original["_queue_bind"](self, exchange, routing_key, pattern, queue)
        if self.typeof(exchange).type == "fanout":  # as kombu marks it
            self._fanout_queues[queue] = (exchange, routing_key.replace("#", "*"))

    QoS.append, QoS.ack, QoS.reject = append, ack, reject
    transport.Channel._queue_bind = _queue_bind
    transport.Channel._has_queue, transport.Channel._delete = _has_queue, _delete
    transport.Channel._refresh_bindings = _refresh_bindings
    transport.Channel._size = _size
    QoS.restore_by_tag, QoS.restore_visible = restore_by_tag, restore_visible
    RedisBackend._set = _set


# issue 22: a broker behind Redis Sentinel. The broker URL (sentinel://...;sentinel://...) reaches
# every app through CELERY_BROKER_URL, which Celery reads itself; the options that name the
# monitored primary and the sentinels' password have no environment variable of Celery's. These
# give them, as JSON objects, to any app, merged over the app's own options when Celery loads its
# settings (the environment's keys win, a nested object such as sentinel_kwargs merged key by key:
# the inventory generated the URL they go with). An app that assigns the whole setting again
# after its settings are loaded (app.conf.broker_transport_options = ...) replaces them.
# CELERY_TOOLKIT_SETTINGS holds settings of their own (the result backend's socket timeouts,
# which Celery reads from redis_socket_timeout... rather than from its transport options), set as
# they are ("" below).
TRANSPORT_OPTIONS = {
    "CELERY_TOOLKIT_BROKER_TRANSPORT_OPTIONS": "broker_transport_options",
    "CELERY_TOOLKIT_RESULT_BACKEND_TRANSPORT_OPTIONS": "result_backend_transport_options",
    "CELERY_TOOLKIT_SETTINGS": "",
}


def transport_options(environ) -> dict[str, dict]:
    """The Celery settings the environment adds to: {setting: options}; SystemExit naming the
    variable when one is not a JSON object."""
    found = {}
    for name, setting in TRANSPORT_OPTIONS.items():
        text = environ.get(name, "").strip()
        if not text:
            continue
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise SystemExit(f"celery_launch: {name} is not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise SystemExit(f"celery_launch: {name} is not a JSON object: {text[:40]!r}")
        found[setting] = value
    return found


def configure(environ=os.environ) -> None:
    """Every app this process loads takes the environment's transport options (issue 22), however
    it configures itself: they are merged in each time Celery (re)loads an app's settings. Every
    Python of a release runs it at start (celery_launch.pth in its virtualenv, beside a copy of
    this file): workers, beat, Flower, `<app>-run celery ...` and the toolkit's helpers alike."""
    extra = transport_options(environ)
    if not extra:
        return
    if any("master_name" in options for options in extra.values()):
        sentinel_clients(extra)
        every_sentinel(environ)
    from celery.app import base

    original = base.Celery._load_config
    if getattr(original, "celery_toolkit_transport", False):
        return  # configured already: by the release's .pth file, then by the launcher

    def _load_config(self):
        conf = original(self)
        for setting, options in extra.items():
            if not setting:
                conf.update(options)
                continue
            own = dict(conf.get(setting) or {})
            conf[setting] = {
                **own,
                **{
                    key: {**own[key], **value}
                    if isinstance(value, dict) and isinstance(own.get(key), dict)
                    else value
                    for key, value in options.items()
                },
            }
        return conf

    _load_config.celery_toolkit_transport = True
    base.Celery._load_config = _load_config


def sentinel_clients(extra: dict[str, dict]) -> None:
    """What kombu 5.7.0 and redis-py 8.1 do after a primary is lost, made to wait for the new one
    (issue 22; measured on the sentinel scenario, docs/benchmarks.md):

    - Publishes: kombu's Redis transport declares no recoverable errors, so `Connection.ensure`
      gives up after one new connection; when the sentinels still name the primary that was just
      demoted, that connection fails ("The previous master is now a slave") and the publish is
      refused, whatever task_publish_retry_policy says (19-119 refused per planned switchover).
      The Sentinel transport's connection errors are declared recoverable (ensure then follows
      the retry policy), and a channel checks with ROLE that the node it reached is a primary.
    - Each new connection builds a Sentinel client whose connections to the sentinels retry 10
      times by redis-py's default: a sentinel on the lost VM costs about 11 connect timeouts
      before the next sentinel is asked (publishes blocked 22-42 s). The sentinels are asked
      once each (the next one answers).
    """
    from kombu.transport import redis as transport
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError
    from redis.retry import Retry

    for options in extra.values():
        if "master_name" in options:
            options["sentinel_kwargs"] = {
                **options.get("sentinel_kwargs", {}),
                "retry": Retry(NoBackoff(), 0),
            }
    klass = transport.SentinelTransport
    if getattr(klass, "celery_toolkit_sentinel", False):
        return
    klass.recoverable_connection_errors = klass.connection_errors
    klass.recoverable_channel_errors = ()
    init = transport.SentinelChannel.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        try:
            role = self.client.execute_command("ROLE")[0]
        except ResponseError:  # an ACL without ROLE (redis_acl_celery_rules of before 0.20.0)
            return
        if role not in (b"master", "master"):
            self._disconnect_pools()
            self.connection.cycle.discard(self)
            raise RedisConnectionError(f"the sentinels named a replica, not a primary ({role!r})")

    transport.SentinelChannel.__init__ = __init__
    transport.SentinelChannel._put = _put_on_a_replica(transport.SentinelChannel._put)
    klass.celery_toolkit_sentinel = True


# A publish through the sentinels returns once a replica has the message (WAIT), or after
# PUBLISH_WAIT_MS with a warning: replication is asynchronous, and a primary killed under load
# lost a message it had acknowledged in its last moment in 2 of 7 runs (tests/bench/sentinel.py).
PUBLISH_WAIT_REPLICAS = 1
PUBLISH_WAIT_MS = 500
_wait_refused: list[str] = []


def sentinels_named(environ) -> list[tuple[str, int]]:
    """The sentinels the app's URLs name (sentinel://USER:PASSWORD@HOST:PORT/DB;...), in order,
    read with kombu's own URL parser, as its Sentinel transport reads them."""
    from kombu.utils.url import url_to_parts

    found = []
    for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        for part in filter(None, (p.strip() for p in environ.get(name, "").split(";"))):
            try:
                url = url_to_parts(part)
                pair = (url.hostname, url.port or 26379)
            except ValueError:  # not a port: kombu says so
                continue
            if url.scheme == "sentinel" and pair[0] and pair not in found:
                found.append(pair)
    return found


def every_sentinel(environ) -> None:
    """A redis-py Sentinel client (blocking or asyncio) given one of the sentinels the app's URLs
    name is given the others after it. Flower (2.2) builds its own asyncio client for its Broker
    page and /api/queues/length from the first part of the URL only (flower.utils.broker
    .RedisSentinel): with that sentinel's VM lost, it showed no queue (molecule/sentinel).
    kombu gives its clients every sentinel already; any other list is left as it is."""
    known = sentinels_named(environ)
    if len(known) < 2:
        return
    from redis import sentinel
    from redis.asyncio import sentinel as asyncio_sentinel  # Flower's

    for klass in (sentinel.Sentinel, asyncio_sentinel.Sentinel):
        if not getattr(klass.__init__, "celery_toolkit_sentinels", False):
            klass.__init__ = _every_sentinel_init(klass.__init__, known)


def _every_sentinel_init(init, known: list[tuple[str, int]]):
    def __init__(self, sentinels, *args, **kwargs):
        given = [(str(host).lower(), int(port)) for host, port in sentinels]
        if len(given) == 1 and given[0] in known:
            sentinels = given + [pair for pair in known if pair != given[0]]
        init(self, sentinels, *args, **kwargs)

    __init__.celery_toolkit_sentinels = True
    return __init__


def _put_on_a_replica(put):
    """kombu's Channel._put (one message into its queue's list), followed by WAIT on the same
    connection (a pipeline). A batch publish, or an ACL user without WAIT, is left to kombu."""
    from kombu.utils.json import dumps
    from redis.exceptions import NoPermissionError

    def _put(self, queue, message, **kwargs):
        if _wait_refused or kwargs.get("_publish_batch") is not None:
            return put(self, queue, message, **kwargs)
        key = self._q_for_pri(queue, self._get_message_priority(message, reverse=False))
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            pipe.lpush(key, dumps(message))
            if self._expires and queue in self._expires:
                for priority in self.priority_steps:
                    pipe.pexpire(self._q_for_pri(queue, priority), self._expires[queue])
            pipe.execute_command("WAIT", PUBLISH_WAIT_REPLICAS, PUBLISH_WAIT_MS)
            replies = pipe.execute(raise_on_error=False)
        for reply in replies[:-1]:  # LPUSH (and PEXPIREs): refused as kombu's would be
            if isinstance(reply, Exception):
                raise reply
        if isinstance(replies[-1], NoPermissionError):
            _wait_refused.append(str(replies[-1]))
            log.warning(
                "celery_launch: the broker refuses WAIT to this user (%s): publishes return "
                "before a replica has them (add +wait to its ACL rules)",
                replies[-1],
            )
        elif isinstance(replies[-1], Exception):
            raise replies[-1]
        elif replies[-1] < PUBLISH_WAIT_REPLICAS:
            log.warning(
                "celery_launch: no replica had the message published to %s within %d ms",
                key,
                PUBLISH_WAIT_MS,
            )

    return _put


def hold_client() -> None:
    """Let a Redis channel closed after its connection was collected give back its unacked
    messages instead of killing the worker (issue 22; kombu 5.7.0, measured on Sentinel failover).

    When the broker dies, Celery's consumer collects its connection (`Connection.collect`): the
    default channel's close fails on the dead socket and stays open, and the transport's `client`
    (the kombu Connection) is set to None. Celery then closes the connection; the channel's close
    gives back its unacked messages (`restore_unacked_once`) through a new pool, which kombu builds
    from `transport.client`: AttributeError 'NoneType' object has no attribute 'hostname', which
    Celery reports as an unrecoverable error and the worker exits (2 of 8 kills of a Sentinel
    primary under load here). The channel keeps the client it was opened with, and its close
    reads that one when the transport has none: the give-back reaches the primary the sentinels
    name now, or fails as a connection error, which the close already ignores.
    """
    from kombu.transport import redis as transport

    init, close = transport.Channel.__init__, transport.Channel.close

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.__dict__["_celery_toolkit_client"] = self.connection.client

    def _close(self):
        owner, held = self.connection, self.__dict__.get("_celery_toolkit_client")
        if owner is None or owner.client is not None or held is None:
            return close(self)
        owner.client = held
        try:
            return close(self)
        finally:
            owner.client = None

    transport.Channel.__init__ = __init__
    transport.Channel.close = _close


def main() -> int:
    found = problems()
    if sys.argv[1:] == ["--check"]:
        print(
            refusal(found) if found else "celery_launch: kombu and celery can be patched",
            file=sys.stderr if found else sys.stdout,
        )
        return 1 if found else 0
    if found:
        print(refusal(found), file=sys.stderr)
        return 78  # EX_CONFIG: systemd and supervisord show it; a deploy's check said it first
    patch()
    hold_client()
    configure()
    # as the `celery` console script: its name in usage lines, its folder first on sys.path
    sys.argv[0] = os.path.join(os.path.dirname(sys.executable), "celery")
    sys.path[0] = os.path.dirname(sys.executable)
    from celery.__main__ import main as celery_main

    celery_main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
