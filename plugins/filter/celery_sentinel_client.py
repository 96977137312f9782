"""The app's side of a replicated broker (issue 22): what the clients are given so that no host
names a primary. The inventory's URLs take the host-less form `sentinel://USER:PASSWORD@/DB`
(validate.yml refuses any other with several broker hosts); at deploy time each becomes one
`sentinel://USER:PASSWORD@ADDRESS:PORT/DB` part per broker node, joined by `;` (kombu's and
Celery's Sentinel form), and the options Celery has no URL for (the monitored primary's name,
the sentinels' password) go to the processes as transport options (celery_toolkit_transport.py).

A single broker host: every URL is given as written and there are no options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What the redis role's default redis_announce_address leaves out of redis_bind_addresses.
NOT_ANNOUNCED = ("127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "*")
DEFAULT_BIND = ["127.0.0.1", "-::1"]
DEFAULT_PORT = 26379
DEFAULT_MASTER_NAME = "celery"
# A failover leaves the clients' connections to the lost primary half-open (no FIN, no RST: its
# VM is gone). Without timeouts a publish waits forever and a consumer's BRPOP until kombu's
# check drops it (brpop_timeout + 2 x health_check_interval, 51 s by default), and a question to
# a lost sentinel waits for TCP's connect timeout (about 2 minutes). Hence, on the data nodes:
NODE_SOCKET = {
    "socket_timeout": 5,  # seconds a command may wait for its reply (BRPOP's own is 1 s)
    "socket_connect_timeout": 2,  # a node of the same network answers a connect within ms
    "socket_keepalive": True,
    "health_check_interval": 3,  # a BRPOP overdue by 1 + 3 s is dropped and reconnected
}
# How long a publish (a producer's, beat's) retries while the primary changes.
PUBLISH_RETRY = {"max_retries": 12, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
BACKEND_RETRY = {
    "result_backend_always_retry": True,
    "result_backend_max_retries": 15,
    "result_backend_base_sleep_between_retries_ms": 100,
    "result_backend_max_sleep_between_retries_ms": 2000,
}
# and on the sentinels, which answer at once or not at all:
SENTINEL_SOCKET = {"socket_timeout": 2, "socket_connect_timeout": 2}


def celery_announce_default(bind_addresses: Any) -> str:
    """The redis role's default redis_announce_address: the first of redis_bind_addresses
    (a leading '-' removed) that is not loopback nor a wildcard; "" when there is none."""
    for address in bind_addresses or []:
        address = str(address).lstrip("-")
        if address not in NOT_ANNOUNCED:
            return address
    return ""


def celery_sentinel_client(nodes: Any) -> dict[str, Any]:
    """From the broker hosts' variables (hostvars of each, in group order): {} for a single
    broker, else {sentinels: ["ADDRESS:PORT", ...], master_name, password} as the clients need
    them. A node's address is its redis_announce_address, else the role's default."""
    nodes = [n for n in nodes or [] if isinstance(n, Mapping)]
    if len(nodes) < 2:
        return {}
    sentinels = []
    for hv in nodes:
        address = str(hv.get("redis_announce_address") or "").strip() or celery_announce_default(
            hv.get("redis_bind_addresses", DEFAULT_BIND)
        )
        host = f"[{address}]" if ":" in address else address
        sentinels.append(f"{host}:{int(hv.get('redis_sentinel_port') or DEFAULT_PORT)}")
    first = nodes[0]
    return {
        "sentinels": sentinels,
        "master_name": str(first.get("redis_sentinel_master_name") or DEFAULT_MASTER_NAME),
        "password": str(first.get("redis_sentinel_password") or ""),
    }


def celery_sentinel_url(url: Any, client: Mapping[str, Any] | None) -> str:
    """The URL a process is given: a host-less `sentinel://LOGIN@/DB` with a replicated broker
    becomes one part per sentinel; any other URL (or a single broker) is returned as written."""
    url = str(url or "")
    if not client or not url.startswith("sentinel://") or ";" in url:
        return url
    rest = url[len("sentinel://") :]
    login, at, tail = rest.rpartition("@")
    if not at:
        login, tail = "", rest
    if not tail.startswith("/"):
        return url  # names a host: validate.yml refuses it before any host
    prefix = f"{login}@" if at else ""
    return ";".join(f"sentinel://{prefix}{s}{tail}" for s in client["sentinels"])


def celery_sentinel_options(client: Mapping[str, Any] | None) -> dict[str, Any]:
    """The transport options of the broker and of the result backend with a replicated broker
    (kombu's SentinelChannel and Celery's SentinelBackend read the same two): {} otherwise."""
    if not client:
        return {}
    sentinel_kwargs: dict[str, Any] = dict(SENTINEL_SOCKET)
    if client.get("password"):
        sentinel_kwargs["password"] = client["password"]
    return {"master_name": client["master_name"], "sentinel_kwargs": sentinel_kwargs, **NODE_SOCKET}


def celery_sentinel_settings(client: Mapping[str, Any] | None) -> dict[str, Any]:
    """Celery settings with a replicated broker: the result backend's sockets (Celery's Redis
    backend reads them from these settings, not from its transport options) and the publishes'
    retries; {} otherwise."""
    if not client:
        return {}
    return {
        "redis_socket_timeout": NODE_SOCKET["socket_timeout"],
        "redis_socket_connect_timeout": NODE_SOCKET["socket_connect_timeout"],
        "redis_socket_keepalive": NODE_SOCKET["socket_keepalive"],
        "redis_backend_health_check_interval": NODE_SOCKET["health_check_interval"],
        # A publish meets the switch of primaries (a failover takes about 7 s): Celery's default
        # retries end within 0.6 s, these after about 10 s (kombu follows them once
        # celery_launch.py declares the Sentinel transport's connection errors recoverable).
        "task_publish_retry_policy": PUBLISH_RETRY,
        # A task's state writes (STARTED, then its result) meet it too. Without these Celery
        # writes once: a task received just before the primary died failed "outside body" on
        # its STARTED state, never ran and stayed in `unacked` until visibility_timeout (found
        # there after 10 kills under load in which 5 lost a task; with these, 2 of 10 lost one,
        # both in the primary's last moment: tests/bench/sentinel.py). It tries 15 more times,
        # pausing 0.2 s, 0.4 s... up to 2 s each (Celery draws each pause at random below that:
        # 12.5 s in all on average, at most 25 s), plus each try's timeouts.
        **BACKEND_RETRY,
    }


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "celery_announce_default": celery_announce_default,
            "celery_sentinel_client": celery_sentinel_client,
            "celery_sentinel_url": celery_sentinel_url,
            "celery_sentinel_options": celery_sentinel_options,
            "celery_sentinel_settings": celery_sentinel_settings,
        }
