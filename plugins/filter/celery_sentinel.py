"""issue 22: a replicated broker's primary, as its sentinels name it
(roles/redis/tasks/primary.yml).

- redis_sentinel_reply: what `redis-cli` printed for AUTH then SENTINEL GET-MASTER-ADDR-BY-NAME,
  as "ADDRESS PORT", or "" when the sentinel gave no address (not running, refused, no such
  master: the first deploy);
- redis_primary_by_majority: the inventory host the answering sentinels name, a majority of them
  agreeing, else the given default (redis_primary): none answered.

And the rules of a replicated broker (more than one host in the group broker):
`sentinel_errors`, run by celery_inventory_errors (playbooks/validate.yml) before any host is
changed, and `celery_sentinel_node_errors`, the rules one node's settings say alone, run by the
redis role's preflight for a use of the role outside the toolkit's playbooks. The app's and
Flower's URLs (broker, result backend) take the host-less Sentinel form
sentinel://USER:PASSWORD@/DB, which the toolkit expands into one part per node
(celery_sentinel_client.py). A single broker host gets none of these rules but the refusal of a
sentinel:// URL. No message holds a secret.
"""

from __future__ import annotations

import ipaddress
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from ansible.errors import AnsibleFilterError
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_broker import (
    ANY_ADDRESS,
    REDIS_SCHEMES,
    sentinel_url_problems,
    single_broker_sentinel_problem,
    url_scheme,
)
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_secrets import (
    ACL_NAME,
    secret_errors,
)
from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import (
    Refusal,
    at_least,
    control,
    hosts_phrase,
    is_loopback,
    once,
    truthy,
    whole,
)


def redis_sentinel_reply(lines: Any) -> str:
    """["OK", ADDRESS, PORT] as "ADDRESS PORT"; anything else as ""."""
    lines = [str(line).strip() for line in lines or []]
    if len(lines) == 3 and lines[0] == "OK" and lines[1] and lines[2].isdigit():
        return f"{lines[1]} {lines[2]}"
    return ""


def redis_primary_by_majority(
    answers: Iterable[str], addresses: Mapping[str, str], default: str
) -> str:
    """The node whose address most answering sentinels give, when they are a majority of those
    answering; `default` when none answers. Sentinels that disagree without a majority, or that
    name an address no node has, stop the play: its changes could demote the real primary."""
    given = [a for a in answers or [] if a]
    if not given:
        return default
    (answer, count), *_ = Counter(given).most_common(1)
    if count * 2 <= len(given):
        raise AnsibleFilterError(
            f"the sentinels disagree on the broker's primary ({', '.join(sorted(set(given)))}): "
            "wait until a failover under way ends (SENTINEL MASTERS on each node), then run "
            "the playbook again."
        )
    address = answer.rsplit(" ", 1)[0]
    for host, node_address in addresses.items():
        if node_address == address:
            return host
    raise AnsibleFilterError(
        f"the sentinels name {address} as the broker's primary, the address of no host of "
        f"redis_nodes ({', '.join(f'{h}: {a}' for h, a in addresses.items())}): check each "
        "node's redis_announce_address."
    )


# --- The rules of a replicated broker -----------------------------------------------------------

Settings = Mapping[str, Mapping[str, Any]]
# What the rules read of each broker host (celery_inventory.py's RULE_VARIABLES adds them).
SENTINEL_VARIABLES = [
    "redis_nodes",
    "redis_primary",
    "redis_announce_address",
    "redis_sentinel_master_name",
    "redis_sentinel_port",
    "redis_sentinel_password",
    "redis_sentinel_quorum",
    "redis_sentinel_down_after_ms",
    "redis_sentinel_failover_timeout_ms",
    "redis_sentinel_node_user",
    "redis_sentinel_node_password",
    "redis_replication_user",
    "redis_replication_password",
    "redis_maxmemory_policy",
    "redis_min_replicas_to_write",
    "redis_min_replicas_max_lag",
]
# The secrets of a replicated broker (celery_secrets.py's MINIMUM_LENGTH gives their length).
SENTINEL_SECRETS = (
    "redis_sentinel_password",
    "redis_sentinel_node_password",
    "redis_replication_password",
)
# Sentinel rewrites its own configuration file (a failover, a new replica or sentinel) and
# writes `requirepass`, `sentinel sentinel-pass`, `sentinel auth-user` and `sentinel auth-pass`
# back unquoted: measured on Redis 7.0.15, `sentinel auth-pass m "p q\"r"` came back as
# `sentinel auth-pass m p q"r`, which the next start reads as other words or an open quote.
SENTINEL_REWRITES = (
    "Sentinel rewrites its configuration file itself and writes this value back unquoted, so a "
    "space or a quote would stop the sentinel at its next start"
)
# The master name is also written unquoted by the toolkit (sentinel.conf's `sentinel monitor`).
MASTER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
# Settings every node must share: any replica may become the primary at a failover.
SAME_ON_EVERY_NODE = (
    "redis_password",
    "redis_admin_user",
    "redis_acl_users",
    "redis_sentinel_password",
    "redis_sentinel_node_user",
    "redis_sentinel_node_password",
    "redis_replication_user",
    "redis_replication_password",
    "redis_port",
    "redis_sentinel_port",
    "redis_sentinel_master_name",
    "redis_maxmemory",
    "redis_maxmemory_policy",
    "redis_min_replicas_to_write",
    "redis_min_replicas_max_lag",
    "redis_databases",
    "redis_tls_enabled",
    "redis_nodes",
    "redis_primary",
)
# ... of which these hold secrets: a message names the hosts, never the values.
SECRET_SETTINGS = frozenset(("redis_password", "redis_acl_users", *SENTINEL_SECRETS))
# Ports of the other services a broker host may run: (variable, the flag that runs it).
OTHER_PORTS = (
    ("redis_port", None),
    ("redis_exporter_port", "redis_exporter_enabled"),
    ("node_exporter_port", "node_exporter_enabled"),
)
ELECTION = (
    "each node runs a sentinel and a majority of the sentinels elects the new primary: 2 nodes "
    "cannot elect one when one is lost, 4 tolerate no more loss than 3"
)


def _nodes(hv: Mapping[str, Any], default: Iterable[str]) -> list[str]:
    """The host's redis_nodes, else `default` (the group broker: the role's default)."""
    nodes = hv.get("redis_nodes")
    return [str(n) for n in nodes] if isinstance(nodes, list) else list(default)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _count_errors(host: str, nodes: list[str]) -> list[Refusal]:
    """Rule 1: an odd number of nodes, at least 3."""
    if len(nodes) >= 3 and len(nodes) % 2:
        return []
    return [
        (
            "redis_nodes",
            host,
            f" holds {len(nodes)} nodes ({hosts_phrase(nodes)}): a replicated broker needs an odd "
            f"number of them, at least 3, as {ELECTION}. Put 3 (or 5) hosts in the group broker, "
            "or one for a broker without replicas.",
        )
    ]


def _quorum_errors(host: str, hv: Mapping[str, Any], nodes: int) -> list[Refusal]:
    """Rule 2: 0 (a majority), else a majority of the nodes and at most all of them."""
    quorum = whole(hv.get("redis_sentinel_quorum"))
    majority = nodes // 2 + 1
    if quorum is None or quorum == 0 or majority <= quorum <= nodes:
        return []
    return [
        (
            "redis_sentinel_quorum",
            host,
            f" is {quorum}: with {nodes} nodes give 0 (a majority, {majority}) or a number from "
            f"{majority} to {nodes}. Fewer sentinels would let a minority cut off from the others "
            "hold the primary down; more than the nodes never agree, and no failover starts.",
        )
    ]


def _min_replicas_errors(host: str, hv: Mapping[str, Any], nodes: int) -> list[Refusal]:
    """Rule 2b: min-replicas-to-write from 0 to the number of replicas; with one node, 0."""
    count = whole(hv.get("redis_min_replicas_to_write"))
    if count is None or 0 <= count < nodes:
        return []
    if nodes < 2:
        fix = (
            "a broker without replicas would refuse every task. Give 0, or put 3 (or 5) hosts in "
            "the group broker."
        )
    else:
        fix = (
            f"with {nodes} nodes give 0 (the primary never refuses a write) or a number from 1 "
            f"to {nodes - 1}, its replicas: more would refuse every task."
        )
    return [("redis_min_replicas_to_write", host, f" is {count}: {fix}")]


def _unquoted_problem(value: str) -> str:
    """What of `value` Sentinel's rewrite of its file cannot carry ("" when nothing)."""
    if kind := control(value):
        return kind
    for char, said in ((" ", "a space"), ('"', "a double quote"), ("'", "a single quote")):
        if char in value:
            return said
    if any(not 0x21 <= ord(char) <= 0x7E for char in value):
        return "a character that is not printable ASCII"
    return ""


def _secret_setting_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """Rules 3 and 4: the three secrets set, long enough, not a sample value outside the sandbox,
    no control character; the two Sentinel stores of printable ASCII without space or quotes."""
    sandbox = truthy(hv.get("celery_toolkit_sandbox", False))
    found = secret_errors(host, {n: hv.get(n) for n in SENTINEL_SECRETS}, sandbox)
    for var in SENTINEL_SECRETS:
        value = str(hv.get(var) or "")
        if var == "redis_replication_password":
            if kind := control(value):
                found.append(
                    (
                        var,
                        host,
                        f" holds {kind}: Redis's configuration ends a directive at a newline and "
                        "the whole file at a NUL; no control character is accepted. Choose a "
                        "password without one (any printable character is fine).",
                    )
                )
        elif problem := _unquoted_problem(value):
            found.append(
                (
                    var,
                    host,
                    f" holds {problem}: {SENTINEL_REWRITES}. Choose a password of printable "
                    "ASCII without a space or a quote (letters, digits and the other symbols are "
                    "fine).",
                )
            )
    return found


def _master_name_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """Rule 4: the master name is a word of letters, digits, '.', '_' and '-'."""
    name = str(hv.get("redis_sentinel_master_name") or "")
    if name and set(name) <= MASTER_NAME_CHARS:
        return []
    return [
        (
            "redis_sentinel_master_name",
            host,
            f" is {name!r}: the sentinels' name of the primary (the clients' master_name) is one "
            f"word of letters, digits, '.', '_' and '-' ({SENTINEL_REWRITES}). Use e.g. celery, "
            "the default.",
        )
    ]


def _user_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """Rule 9: the replicas' and the sentinels' Redis users are words of their own."""
    acl = {str(u.get("name")) for u in hv.get("redis_acl_users") or [] if isinstance(u, Mapping)}
    taken = {"default", str(hv.get("redis_admin_user"))} | acl
    if truthy(hv.get("redis_exporter_enabled", False)):
        taken.add(str(hv.get("redis_exporter_user")))
    found: list[Refusal] = []
    for var, other, who, example, why in (
        (
            "redis_replication_user",
            "redis_sentinel_node_user",
            "the replicas log in to the primary",
            "replica",
            "",
        ),
        (
            "redis_sentinel_node_user",
            "redis_replication_user",
            "the sentinels log in to every node",
            "sentinel",
            f" ({SENTINEL_REWRITES})",
        ),
    ):
        user = str(hv.get(var) or "")
        if ACL_NAME.match(user) and user not in taken | {str(hv.get(other))}:
            continue
        found.append(
            (
                var,
                host,
                f" is {user!r}: {who} as a Redis user of their own, a plain word (letters, "
                f"digits, '.', '_' and '-'){why} that is not `default`, redis_admin_user, "
                f"{other}, redis_exporter_user nor a name of redis_acl_users, e.g. {example}.",
            )
        )
    return found


def _port_errors(host: str, hv: Mapping[str, Any], taken: Mapping[str, Any]) -> list[Refusal]:
    """Rule 10: the sentinel's port is a TCP port no other service of the host takes."""
    port = whole(hv.get("redis_sentinel_port"))
    if port is None:
        return []  # the argument spec names a port that is no number
    if not 1 <= port <= 65535:
        return [("redis_sentinel_port", host, f" is {port}: give a TCP port from 1 to 65535.")]
    return [
        (
            "redis_sentinel_port",
            host,
            f" is {port}, which {name} takes on this host: the sentinel listens on Redis's "
            "addresses and could not start. Give it a port of its own (26379 is Sentinel's).",
        )
        for name, value in taken.items()
        if whole(value) == port
    ]


def _taken_ports(hv: Mapping[str, Any], flower: bool = False, worker: bool = False) -> dict:
    """The ports of the other services of a broker host (the exporters when they run)."""
    taken = {n: hv.get(n) for n, flag in OTHER_PORTS if flag is None or truthy(hv.get(flag))}
    if flower:
        taken["flower_port"] = hv.get("flower_port")
    if worker and truthy(hv.get("celery_exporter_enabled", True)):
        taken["celery_exporter_port"] = hv.get("celery_exporter_port")
    return taken


def _announce_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """Rule 6, on the node alone: an IP address the other nodes can reach, one it listens on."""
    address = str(hv.get("redis_announce_address") or "").strip()
    listening = [str(a).lstrip("-") for a in hv.get("redis_bind_addresses") or []]
    listed = ", ".join(listening) or "none"
    ip = _ip(address)
    if not address:
        problem = (
            f" is empty: the other nodes, the sentinels and the clients reach the node at this "
            f"address, and its redis_bind_addresses ({listed}) hold none but loopback. Add the "
            "node's private address to redis_bind_addresses (the first that is not loopback is "
            "the default), or set redis_announce_address to one it holds."
        )
    elif ip is None:
        problem = (
            f" is {address!r}, not an IP address: the sentinels resolve no host names and hand "
            "this address to the clients. Give the node's private address."
        )
    elif is_loopback(address) or ip.is_loopback or ip.is_unspecified:
        problem = (
            f" is {address}, which the other nodes cannot reach: give the node's private "
            "address (and list it in redis_bind_addresses)."
        )
    elif not any(a in ANY_ADDRESS for a in listening) and ip not in map(_ip, listening):
        problem = (
            f" is {address}, an address Redis does not listen on there (redis_bind_addresses: "
            f"{listed}): add it to redis_bind_addresses, or give one of those."
        )
    else:
        return []
    return [("redis_announce_address", host, problem)]


def _tls_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """Rule 7: no TLS between the nodes yet."""
    if not truthy(hv.get("redis_tls_enabled", False)):
        return []
    return [
        (
            "redis_tls_enabled",
            host,
            " is true: a replicated broker speaks plain TCP between its nodes for now (issue "
            "22): set redis_tls_enabled: false, or keep a single broker host for TLS.",
        )
    ]


def _primary_errors(
    host: str, hv: Mapping[str, Any], nodes: list[str], where: str
) -> list[Refusal]:
    """Rule 8, its half one host says: redis_primary is one of the nodes."""
    primary = str(hv.get("redis_primary") or (nodes[0] if nodes else ""))
    if primary in nodes:
        return []
    return [
        (
            "redis_primary",
            host,
            f" is {primary!r}, not a host of {where} ({hosts_phrase(nodes)}): name the one to be "
            "the primary on the first deploy, or leave it unset (the first of them).",
        )
    ]


def node_errors(
    host: str, hv: Mapping[str, Any], nodes: list[str], taken: Mapping[str, Any] | None = None
) -> list[Refusal]:
    """What one node's settings say alone of a replicated broker of `nodes`: their number, the
    quorum, the secrets and what Sentinel stores, the users, the sentinel's port and timeouts,
    the announced address, no TLS."""
    found = _count_errors(host, nodes)
    found += _quorum_errors(host, hv, len(nodes))
    found += _min_replicas_errors(host, hv, len(nodes))
    found += _secret_setting_errors(host, hv)
    found += _master_name_errors(host, hv)
    found += _user_errors(host, hv)
    found += _port_errors(host, hv, _taken_ports(hv) if taken is None else taken)
    for var in ("redis_sentinel_down_after_ms", "redis_sentinel_failover_timeout_ms"):
        found += at_least(
            host, hv, var, 1, "Sentinel refuses a time of 0 or less and would not start."
        )
    found += at_least(
        host,
        hv,
        "redis_min_replicas_max_lag",
        1,
        "give the seconds within which a replica's acknowledgement counts, 1 or more.",
    )
    found += _announce_errors(host, hv)
    found += _tls_errors(host, hv)
    return found


def _canonical(name: str, value: Any) -> str:
    """A value as it compares between nodes: 6379 and "6379" alike, true and "yes" alike."""
    if name == "redis_tls_enabled":
        return str(truthy(value))
    if name == "redis_nodes" and isinstance(value, list):
        value = sorted(str(n) for n in value)
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return "" if value is None else str(value)


def _same_errors(brokers: list[str], settings: Settings) -> list[Refusal]:
    """Rule 5: the settings every node must share, compared with the value most nodes have (the
    first node's on a tie); a secret's message names the hosts, never the values."""
    found: list[Refusal] = []
    for name in SAME_ON_EVERY_NODE:
        values = {host: settings[host].get(name) for host in brokers if name in settings[host]}
        given = {host: _canonical(name, value) for host, value in values.items()}
        if len(set(given.values())) < 2:
            continue
        (common, _), *_ = Counter(given.values()).most_common(1)
        sharing = [host for host, value in given.items() if value == common]
        shown = values[sharing[0]]
        for host, value in given.items():
            if value == common:
                continue
            said = (
                f" is not the one {hosts_phrase(sharing)} {'have' if len(sharing) > 1 else 'has'}"
                if name in SECRET_SETTINGS
                else f" is {values[host]!r} there but {shown!r} on {hosts_phrase(sharing)}"
            )
            found.append(
                (
                    name,
                    host,
                    f"{said}: every node of a replicated broker needs the same value, as any of "
                    "them may become the primary at a failover (a replica with another password "
                    "or maxmemory fails there). Set it once, in group_vars/broker.",
                )
            )
    return found


def _membership_errors(brokers: list[str], settings: Settings) -> list[Refusal]:
    """Rule 8: redis_nodes are the hosts of the group broker, redis_primary one of them."""
    found: list[Refusal] = []
    for host in brokers:
        hv = settings[host]
        nodes = _nodes(hv, brokers)
        if sorted(set(nodes)) != sorted(brokers) or len(nodes) != len(brokers):
            found.append(
                (
                    "redis_nodes",
                    host,
                    f" is {nodes!r}, not the hosts of the group broker ({hosts_phrase(brokers)}): "
                    "every broker host is a node and no other host is; leave redis_nodes unset "
                    "(the group broker).",
                )
            )
        found += _primary_errors(host, hv, brokers, "the group broker")
    return found


def _unique_address_errors(brokers: list[str], settings: Settings) -> list[Refusal]:
    """Rule 6, between the nodes: each announces an address of its own."""
    by_address: dict[str, list[str]] = {}
    for host in brokers:
        address = str(settings[host].get("redis_announce_address") or "").strip()
        if address:
            by_address.setdefault(str(_ip(address) or address), []).append(host)
    return [
        (
            "redis_announce_address",
            host,
            f" is {address} on each: every node needs an address of its own, where the others "
            "and the clients reach it. Set each node's in its host_vars (or its "
            "redis_bind_addresses).",
        )
        for address, hosts in by_address.items()
        if len(hosts) > 1
        for host in hosts
    ]


# The app's and Flower's URLs towards the broker: (variable, whose: workers or flowers).
CLIENT_URLS = (
    ("celery_app_broker_url", "workers"),
    ("flower_broker_url", "flowers"),
    ("celery_app_result_backend", "workers"),
)


def _client_url_errors(
    brokers: list[str], settings: Settings, clients: Mapping[str, Iterable[str]]
) -> list[Refusal]:
    """Rule 11: with a replicated broker the app's and Flower's URLs (the result backend when it
    is Redis's) take the host-less Sentinel form, which the toolkit expands into one part per
    node (celery_broker.py's sentinel_url_problems); without one, sentinel:// is refused. An
    empty URL is secret_errors' (or Flower's: the app's URL), a result backend holding a control
    character result_backend_errors'."""
    found: list[Refusal] = []
    for var, whose in CLIENT_URLS:
        for host in sorted(set(clients[whose])):
            url = str(settings[host].get(var) or "")
            scheme = url_scheme(url)
            if not url or (var == "celery_app_result_backend" and scheme not in REDIS_SCHEMES):
                continue
            if len(brokers) < 2:
                if scheme == "sentinel":
                    found.append((var, host, single_broker_sentinel_problem(brokers)))
            elif var != "celery_app_result_backend" or not control(url):
                found += [(var, host, p) for p in sentinel_url_problems(url, brokers, settings)]
    return found


def sentinel_errors(
    brokers: Iterable[str],
    settings: Settings,
    flowers: Iterable[str] = (),
    workers: Iterable[str] = (),
) -> list[Refusal]:
    """The rules of a replicated broker, when the group broker holds more than one host: see
    node_errors, and between the nodes the settings they must share, redis_nodes and
    redis_primary against the group, an announced address each, and the app's and Flower's URLs
    in the host-less Sentinel form. A single broker host gets only the membership rules (which
    its defaults pass: redis_nodes set to more hosts would make it a node of a replicated broker
    alone) and the refusal of a sentinel:// URL."""
    brokers, flowers, workers = list(brokers), list(flowers), list(workers)
    clients = {"flowers": flowers, "workers": workers}
    found = _membership_errors(brokers, settings)
    if len(brokers) < 2:
        for host in brokers:
            found += _min_replicas_errors(host, settings[host], 1)
        return found + _client_url_errors(brokers, settings, clients)
    for host in brokers:
        hv = settings[host]
        taken = _taken_ports(hv, host in flowers, host in workers)
        found += node_errors(host, hv, brokers, taken)
    found += _same_errors(brokers, settings)
    found += _unique_address_errors(brokers, settings)
    # A worker or Flower given one node's address would write to a read-only replica after the
    # first failover: the clients go through the sentinels.
    found += _client_url_errors(brokers, settings, clients)
    return found


def celery_sentinel_node_errors(hv: Mapping[str, Any], host: str) -> list[str]:
    """Ansible entry point of the redis role's preflight: the rules one node's settings say
    alone when redis_nodes holds more than one node (it is one of them); on a single broker,
    only that it waits for no replica (min-replicas-to-write)."""
    nodes = _nodes(hv, [host])
    if len(nodes) < 2:
        return once(_min_replicas_errors(host, hv, 1))
    found = node_errors(host, hv, nodes)
    found += _primary_errors(host, hv, nodes, "redis_nodes")
    if host not in nodes:
        found.append(
            (
                "redis_nodes",
                host,
                f" does not hold this host ({hosts_phrase(nodes)}): list every node of the "
                "broker, this one too.",
            )
        )
    return once(found)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "redis_sentinel_reply": redis_sentinel_reply,
            "redis_primary_by_majority": redis_primary_by_majority,
            "celery_sentinel_node_errors": celery_sentinel_node_errors,
        }
