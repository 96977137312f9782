"""A planned switchover of a Redis primary watched by Sentinel that loses no write (issue 22).

    python3 redis_switchover.py CONFIG.json

`SENTINEL FAILOVER` alone promotes a replica at once, but the clients keep the connections they
have to the old primary, which takes their writes until Sentinel makes it a replica, seconds
later: those writes are not on the new primary (534 of 1207 writes made every 20 ms were lost
here, the old primary demoted 11 s after the promotion). So this script, with only Python's
standard library (a broker VM has no redis-py):

1. asks the sentinels (a majority, agreeing) which node is the primary;
2. pauses the primary's writes (`CLIENT PAUSE <pause_ms> WRITE`: clients wait, nothing is
   refused), renewing the pause while it waits; if this script dies, it ends pause_ms later;
3. waits until every replica has what the primary had once paused (their offsets, from `ROLE`);
4. asks one sentinel for `SENTINEL FAILOVER` (another only if that one cannot be reached: a second
   forced failover could promote another replica) and waits until a majority names the new
   primary;
5. makes the old primary a replica of it at once (`REPLICAOF`, what Sentinel does later), closes
   its clients' connections (they ask the sentinels again and reach the new primary), and ends
   the pause.

Before step 4 a failing step ends the pause and nothing has changed; after it, a failover may be
under way, so the pause is left to end by itself. Either way it exits 1 with one line naming
the step, and also when Sentinel promoted a replica that was not among those found in sync.
Writes were held 1.2 to 2.5 s here. Keep the whole pause below the sentinels'
`down-after-milliseconds`: a review's reading of Redis (not measured) is that their PINGs may
queue behind their hello PUBLISH, which the pause holds, and mark the primary down. CONFIG (JSON,
readable by root only: it holds passwords) gives `master_name`, `sentinels` ([host, port] pairs),
`sentinel_auth` and `node_auth` ({"username", "password"}, {} for none), optionally `tls`
({"ca_file", "cert_file", "key_file"}; certificates must name the addresses the nodes announce),
`pause_ms` (3000), `sync_timeout_s` (5) and `promote_timeout_s` (30).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import time


class Refused(Exception):
    """A step that did not go as planned: its message is the one line printed."""


class NotAsked(Refused):
    """No sentinel could be reached: no failover was asked for."""


class Node:
    """One connection to a Redis server or sentinel, speaking RESP2."""

    def __init__(self, host: str, port: int, auth: dict, tls: dict | None, timeout: float = 5.0):
        self.address = f"{host}:{port}"
        sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            context = ssl.create_default_context(cafile=tls.get("ca_file"))
            if tls.get("cert_file"):
                context.load_cert_chain(tls["cert_file"], tls.get("key_file"))
            sock = context.wrap_socket(sock, server_hostname=host)
        self.sock, self.buffer = sock, sock.makefile("rb")
        if auth.get("password") is not None:
            user = auth.get("username")
            try:
                self.call("AUTH", *([user] if user else []), auth["password"])
            except (OSError, Refused):
                self.close()
                raise

    def call(self, *args):
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self):
        line = self.buffer.readline()
        if not line:
            raise OSError(f"{self.address} closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise Refused(f"{self.address} answered: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.buffer.read(size + 2)
            if len(data) != size + 2:
                raise OSError(f"{self.address} closed the connection mid-reply")
            return data[:-2].decode()
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self._reply() for _ in range(size)]
        raise OSError(f"{self.address}: unexpected reply {line[:40]!r}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def primary_by_majority(config: dict) -> tuple[str, int]:
    """The primary a majority of the sentinels names (they must agree)."""
    named: dict[tuple[str, int], int] = {}
    for host, port in config["sentinels"]:
        try:
            node = Node(host, port, config["sentinel_auth"], config.get("tls"))
            try:
                addr = node.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", config["master_name"])
            finally:
                node.close()
        except (OSError, Refused):
            continue
        if addr:
            named[(addr[0], int(addr[1]))] = named.get((addr[0], int(addr[1])), 0) + 1
    majority = len(config["sentinels"]) // 2 + 1
    for addr, count in named.items():
        if count >= majority:
            return addr
    raise Refused(
        f"no majority of the {len(config['sentinels'])} sentinels names one primary of "
        f"{config['master_name']!r} (they say {named or 'nothing'})"
    )


def replicas_in_sync(primary: Node, hold, deadline: float) -> list[str]:
    """Wait until every replica has what the primary had once paused (its offset then: the
    primary's own replication PINGs may move it on); the replicas' addresses."""
    target = None
    while True:
        role = primary.call("ROLE")
        if role[0] != "master":
            raise Refused(f"{primary.address} is a {role[0]}, not the primary")
        offset, replicas = int(role[1]), role[2]
        if not replicas:
            raise Refused(f"{primary.address} has no replica to switch to")
        target = offset if target is None else target
        behind = [f"{r[0]}:{r[1]}" for r in replicas if int(r[2]) < target]
        if not behind:
            return [f"{r[0]}:{r[1]}" for r in replicas]
        if time.monotonic() > deadline:
            raise Refused(f"replicas {', '.join(behind)} did not catch up with {primary.address}")
        hold()
        time.sleep(0.05)


def ask_failover(config: dict) -> str:
    """SENTINEL FAILOVER, asked once: the next sentinel only if one cannot be reached (a second
    forced failover could promote another replica). The sentinel asked."""
    unreachable = []
    for host, port in config["sentinels"]:
        try:
            sentinel = Node(host, port, config["sentinel_auth"], config.get("tls"))
        except (OSError, Refused) as exc:
            unreachable.append(f"{host}:{port} ({exc})")
            continue
        try:
            sentinel.call("SENTINEL", "FAILOVER", config["master_name"])
        except OSError:
            pass  # sent: it may have started, the wait for a new primary tells
        finally:
            sentinel.close()
        return f"{host}:{port}"
    raise NotAsked(f"no sentinel could be asked for the failover: {'; '.join(unreachable)}")


REQUIRED = ("master_name", "sentinels", "sentinel_auth", "node_auth")


def switchover(config: dict) -> str:
    missing = [key for key in REQUIRED if config.get(key) in (None, "", [])]
    if missing:
        raise KeyError(", ".join(missing))
    pause_ms = int(config.get("pause_ms", 3000))
    host, port = primary_by_majority(config)
    old = Node(host, port, config["node_auth"], config.get("tls"))

    def hold() -> None:
        # renewed while waiting (Redis keeps the later end): the pause never runs out before
        # the old primary is a replica; if this script dies, it ends pause_ms later
        old.call("CLIENT", "PAUSE", pause_ms, "WRITE")

    paused, asked, switched = time.monotonic(), None, False
    hold()
    try:
        replicas = replicas_in_sync(old, hold, paused + float(config.get("sync_timeout_s", 5)))
        asked = "a sentinel"  # from here a failover may be under way: the pause is kept
        try:
            asked = ask_failover(config)  # a refusal (-INPROG, -NOGOODSLAVE) ends the script
        except NotAsked:
            asked = None
            raise
        deadline = time.monotonic() + float(config.get("promote_timeout_s", 30))
        while True:
            try:
                new = primary_by_majority(config)
            except Refused:
                new = (host, port)
            if new != (host, port):
                break
            if time.monotonic() > deadline:
                raise Refused(
                    f"sentinel {asked} was asked for the failover; no replica was promoted in "
                    f"time (writes on {host}:{port} stay paused for {pause_ms} ms more)"
                )
            hold()
            time.sleep(0.05)
        # what Sentinel does to the old primary when it gets to it, done now: no client of it
        # writes anything the new primary would not have
        old.call("REPLICAOF", new[0], new[1])
        old.call("CLIENT", "KILL", "TYPE", "normal")
        old.call("CLIENT", "KILL", "TYPE", "pubsub")
        switched = True
    finally:
        # unpaused when nothing was asked of a sentinel, or once the switch is done; a failover
        # asked for and not seen through keeps the pause until it ends by itself
        if asked is None or switched:
            with contextlib.suppress(OSError, Refused):
                old.call("CLIENT", "UNPAUSE")
        old.close()
    held = round((time.monotonic() - paused) * 1000)
    promoted = f"{new[0]}:{new[1]}"
    if promoted not in replicas:
        raise Refused(
            f"sentinel promoted {promoted}, not one of the replicas found in sync "
            f"({', '.join(replicas)}): writes it had not received may be missing"
        )
    return (
        f"switched {config['master_name']}: {host}:{port} -> {promoted} "
        f"(replicas in sync: {', '.join(replicas)}; writes paused {held} ms)"
    )


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: redis_switchover.py CONFIG.json", file=sys.stderr)
        return 2
    try:
        with open(argv[1], encoding="utf-8") as handle:
            config = json.load(handle)
        print(switchover(config))
    except KeyError as exc:
        print(f"redis_switchover: {argv[1]} gives no {exc.args[0]}", file=sys.stderr)
        return 1
    except (OSError, ValueError, Refused) as exc:
        print(f"redis_switchover: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
