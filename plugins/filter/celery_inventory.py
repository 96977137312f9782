"""The inventory's rules, run together by playbooks/validate.yml before any host is changed:
`celery_inventory_errors` returns one message per refusal, naming every host it concerns
("on vm1, vm2 and vm3") and the fix, however many hosts share the value.

Each host's settings are the inventory's values, else the roles' defaults: validate.yml notes
them per host (`__validate_settings`, the names `celery_rule_variables` picks) and hands them
over as `settings`; no rule here writes a role's default again.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from ansible_collections.celery_toolkit.stack.plugins.filter.celery_alerts import (  # issue 20
    EXPORTERS,
    PROMETHEUS_SETTINGS,
    prometheus_hosts,
    prometheus_setting_errors,
)
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_broker import (
    broker_url_errors,
    flower_port_errors,
)
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_layout import group_errors
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_names import app_name_errors
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_process import (
    ONE_MANAGER_SETTINGS,
    log_setting_errors,
    manager_setting_problems,
)
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_secrets import (
    ACL_NAME,
    PLACEHOLDERS,
    credential_errors,
    environment_errors,
    result_backend_errors,
    secret_errors,
)
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_sentinel import (  # issue 22
    SENTINEL_VARIABLES,
    sentinel_errors,
)
from ansible_collections.celery_toolkit.stack.plugins.filter.celery_stranded import (  # issue 21
    move_into_errors,
)
from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import (
    NAME,
    NAME_RULE,
    Refusal,
    at_least,
    control,
    hosts_phrase,
    once,
    truthy,
    whole,
)

Settings = Mapping[str, Mapping[str, Any]]
# Variables an earlier version of the toolkit read, and the ones that replaced them: an
# inventory that still sets one would silently lose its effect.
RENAMED = {
    "celery_workers_memory_deny_write_execute": "celery_app_memory_deny_write_execute (it now "
    "hardens every service of the app, Flower too)",
}
# What the rules read of each host (role variables and the inventory's own), by owner.
RULE_VARIABLES = [
    "celery_app_name",
    "celery_app_user",
    "celery_app_group",
    "celery_app_base_dir",
    "celery_app_config_dir",
    "celery_process_manager",
    "celery_deploy_batch",
    "celery_deploy_move_into",  # issue 21
    "celery_private_address",
    "celery_app_broker_url",
    "celery_app_result_backend",
    "celery_app_environment",
    "celery_app_memory_deny_write_execute",
    "celery_app_broker_ca_file",
    "celery_workers_groups",
    "celery_workers_beat_enabled",
    "celery_workers_health_timeout",
    "flower_address",
    "flower_port",
    "flower_basic_auth_user",
    "flower_basic_auth_password",
    "flower_tls_cert_file",
    "flower_tls_key_file",
    "redis_password",
    "redis_password_previous",
    "redis_acl_users",
    "redis_port",
    "redis_databases",
    "redis_bind_addresses",
    "redis_default_user_enabled",
    "redis_tls_enabled",
    "redis_tls_cert_file",
    "redis_tls_key_file",
    "redis_tls_ca_file",
    "redis_admin_user",
    "redis_maxmemory",
    "redis_acl_celery_rules",
    "redis_acl_flower_rules",
    "flower_broker_url",
    "celery_workers_layout_name",
    "celery_app_requirements",
    # issue 21: releases kept, log bounds
    "celery_app_keep_releases",
    "celery_app_journal_max_use",
    "celery_app_log_rate_limit_interval",
    "celery_app_log_rate_limit_burst",
    "celery_app_log_max_bytes",
    "celery_app_log_backups",
    "ansible_host",
    "celery_toolkit_sandbox",
    # issue 20: exporters
    "redis_exporter_enabled",
    "redis_exporter_port",
    "redis_exporter_address",
    "redis_exporter_user",
    "redis_exporter_password",
    "redis_exporter_queues",
    "redis_exporter_database",
    "redis_firewall_monitor_allowed",
    "redis_acl_exporter_rules",
    "node_exporter_enabled",
    "node_exporter_port",
    "node_exporter_address",
    "node_exporter_extra_args",
    # issue 20: celery_exporter
    "celery_exporter_enabled",
    "celery_exporter_address",
    "celery_exporter_port",
    "celery_exporter_interval",
] + list(RENAMED)
# issue 20: prometheus
EXPORTER_ROLES = [role for role, _ in EXPORTERS.values()]
RULE_VARIABLES += [
    *PROMETHEUS_SETTINGS,
    "prometheus_address",
    "prometheus_port",
    "prometheus_flower_ca_file",
    "prometheus_alert_queue_thresholds",
    # what the scrape configuration reads of the exporters' roles (h2, h3 may list them too)
    *(f"{role}_{what}" for role in EXPORTER_ROLES for what in ("enabled", "address", "port")),
]
# issue 22: a replicated broker
RULE_VARIABLES += SENTINEL_VARIABLES


def celery_rule_variables(defined: Iterable[str]) -> list[str]:
    """Of the variables `defined` for a host (ansible.builtin.varnames), those the rules read."""
    defined = set(defined)
    return [name for name in RULE_VARIABLES if name in defined]


def batch_errors(value: Any) -> list[str]:
    """celery_deploy_batch becomes the rolling play's `serial`: hosts (>= 1) or a percentage, or
    a list of those (growing batches). A bad value would fail only when that play starts, after
    the broker play has run."""
    for item in value if isinstance(value, list) and value else [value]:
        text = str(item).strip()
        if isinstance(item, bool) or not re.fullmatch(r"[0-9]+%?", text):
            break
        number = int(text.rstrip("%"))
        if number < 1 or (text.endswith("%") and number > 100):
            break
    else:
        return []
    return [
        f"celery_deploy_batch must be a number of hosts (1 or more), a percentage from '1%' to "
        f"'100%', or a list of those; got {value!r}: set it in group_vars/all (1 = one host at "
        "a time, the safest rolling restart)"
    ]


# Redis's memory sizes: bytes, or a number with k, kb, m, mb, g or gb (any case).
MEMORY_SIZE = re.compile(r"^[0-9]+([kmg]b?)?$", re.IGNORECASE)


def address_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """celery_private_address is an IP address (Redis binds it, nftables admits it)."""
    address = str(hv.get("celery_private_address") or "")
    try:
        if address:
            ipaddress.ip_address(address)
    except ValueError:
        return [
            (
                "celery_private_address",
                host,
                f" is {address!r}, not an IP address: Redis binds it and the broker's firewall "
                "admits it. Give the host's address on the network between the VMs (10.0.0.5), "
                "or leave it empty (an IP ansible_host, else the host's facts).",
            )
        ]
    return []


def broker_setting_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """What the redis role's argument spec cannot say: a memory size Redis reads, ACL rules that
    stay on their configuration line."""
    found: list[Refusal] = []
    if not MEMORY_SIZE.match(str(hv["redis_maxmemory"]).strip()):
        found.append(
            (
                "redis_maxmemory",
                host,
                f" is {hv['redis_maxmemory']!r}: Redis reads bytes, or a number with k, kb, m, "
                "mb, g or gb ('512mb'; '0' for no limit), and would not start.",
            )
        )
    for var in ("redis_acl_celery_rules", "redis_acl_flower_rules", "redis_acl_exporter_rules"):
        if kind := control(hv[var]):
            found.append(
                (
                    var,
                    host,
                    f" holds {kind}: the rules are one line of Redis's configuration. Separate "
                    "them with spaces.",
                )
            )
    return found


def worker_setting_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """What the argument specs cannot say of a worker host's settings: a setting its process
    manager cannot apply (the seam's filters say which; the choices are in roles/celery's
    spec), a health gate that waits at least a second, no variable the toolkit no longer reads."""
    found: list[Refusal] = []
    on = [name for name in ONE_MANAGER_SETTINGS if name in hv and truthy(hv[name])]
    manager = hv["celery_process_manager"]
    found += [(name, host, why) for name, why in manager_setting_problems(manager, on)]
    timeout = hv["celery_workers_health_timeout"]
    if whole(timeout) is not None and whole(timeout) < 1:
        found.append(
            (
                "celery_workers_health_timeout",
                host,
                f" is {timeout!r}: a worker group would have no time to answer its first ping "
                "after a start, and every deploy would fail. Give it at least 1 second (60, the "
                "default, fits most apps).",
            )
        )
    requirements = str(hv["celery_app_requirements"] or "")
    if requirements and not os.path.isfile(requirements):
        found.append(
            (
                "celery_app_requirements",
                host,
                f" names {requirements}, which is not a file on the controller: give the "
                "requirements file of the app's source folder, or leave it empty (the folder's "
                "requirements.txt).",
            )
        )
    layout = str(hv["celery_workers_layout_name"])
    if not NAME.match(layout):
        found.append(
            (
                "celery_workers_layout_name",
                host,
                f" is {layout!r}: it names the layout in the host's facts and the status table, "
                f"so it must be {NAME_RULE} (split is the default).",
            )
        )
    found += at_least(
        host,
        hv,
        "celery_app_keep_releases",
        2,
        "a host whose new release fails the health gate returns to the one before it, which a "
        "value below 2 removes. Set it to 2 or more (3 is the default).",
    )
    found += log_setting_errors(host, hv)
    for old, new in RENAMED.items():
        if old in hv:
            found.append((old, host, f" is set but the toolkit no longer reads it: set {new}."))
    return found


# issue 20: celery_exporter
def exporter_errors(
    host: str, hv: Mapping[str, Any], flower: bool = False, broker: bool = False
) -> list[Refusal]:
    """The toolkit's Celery exporter (role celery_exporter) on a worker host: an IP address to
    bind, a port no other service of the host holds, at least a second between collections."""
    if not truthy(hv.get("celery_exporter_enabled", True)):
        return []
    found: list[Refusal] = []
    address = str(hv.get("celery_exporter_address", "127.0.0.1"))
    try:
        ipaddress.ip_address(address)
    except ValueError:
        found.append(
            (
                "celery_exporter_address",
                host,
                f" is {address!r}, not an IP address: the exporter binds it. Set the host's "
                "private address (or 127.0.0.1, the default without celery_private_address).",
            )
        )
    port = whole(hv.get("celery_exporter_port", 9808))
    taken = {"flower_port": flower, "redis_port": broker}
    if port is not None and not 1 <= port <= 65535:
        found.append(
            (
                "celery_exporter_port",
                host,
                f" is {port}: a TCP port is 1 to 65535 (9808 is its own).",
            )
        )
    for name, applies in taken.items():
        if port is not None and applies and port == whole(hv.get(name)):
            found.append(
                (
                    "celery_exporter_port",
                    host,
                    f" is {port}, the port of {name} there: the exporter could not listen. Give it "
                    "another port (9808 is its own).",
                )
            )
    found += at_least(
        host,
        hv,
        "celery_exporter_interval",
        1,
        "the exporter needs at least 1 second between two collections (15 is the default).",
    )
    return found


def celery_exporter_errors(settings: Mapping[str, Any], host: str) -> list[str]:
    """The role's own preflight (roles/celery_exporter/tasks/preflight.yml): this host's rules."""
    return once(exporter_errors(host, settings))


def celery_inventory_errors(groups: Mapping[str, Iterable[str]], settings: Settings) -> list[str]:
    """Ansible entry point: every rule of the inventory's settings (`groups` is Ansible's
    groups: broker, celery_workers, flower)."""
    workers = list(groups.get("celery_workers", []))
    brokers = list(groups.get("broker", []))
    flowers = list(groups.get("flower", []))
    errors: list[str] = []
    if workers:
        errors += batch_errors(settings[workers[0]]["celery_deploy_batch"])
    found: list[Refusal] = []
    for host in workers:
        hv = settings[host]
        found += app_name_errors(host, hv)
        found += worker_setting_errors(host, hv)
        found += group_errors(host, hv["celery_workers_groups"])
    for host in settings:
        found += address_errors(host, settings[host])
    for host in brokers:
        found += broker_setting_errors(host, settings[host])
    found += broker_url_errors(workers, brokers, settings)
    found += broker_url_errors(flowers, brokers, settings, "flower_broker_url")
    found += flower_port_errors(flowers, brokers, settings)
    found += move_into_errors(workers, settings)  # issue 21
    # issue 20: celery_exporter
    for host in workers:
        found += exporter_errors(host, settings[host], host in flowers, host in brokers)
    needs: dict[str, list[str]] = {}
    for host in brokers:
        needs.setdefault(host, []).extend(["redis_password", "redis_acl_users", "redis_admin_user"])
    for host in workers:
        needs.setdefault(host, []).append("celery_app_broker_url")
    for host in flowers:
        needs.setdefault(host, []).extend(["flower_basic_auth_user", "flower_basic_auth_password"])
    for host, names in needs.items():
        hv = settings[host]
        sandbox = truthy(hv.get("celery_toolkit_sandbox", False))
        found += secret_errors(host, {n: hv[n] for n in names}, sandbox)
        found += credential_errors(host, hv, names)
    for host in workers:
        found += environment_errors(host, settings[host]["celery_app_environment"])
        found += result_backend_errors(host, settings[host]["celery_app_result_backend"])
    found += package_exporter_errors(brokers, workers, settings)
    found += sentinel_errors(brokers, settings, flowers, workers)  # issue 22
    # issue 20: prometheus
    for host in prometheus_hosts(groups):
        found += prometheus_setting_errors(host, settings[host])
    return errors + once(found)


# issue 20: exporters. The rules of roles/redis_exporter and roles/node_exporter (Debian's
# prometheus-redis-exporter on the broker hosts, prometheus-node-exporter on broker and worker
# hosts).
EXPORTER_ARG = re.compile(r"^--[a-z0-9][a-z0-9._-]*(=\S*)?$")
EXPORTER_OWN_ARGS = ("--web.listen-address", "--collector.textfile.directory")


def _exporter_listen_errors(
    host: str, hv: Mapping[str, Any], role: str, taken: dict[str, Any]
) -> list[Refusal]:
    """<role>_address is an IP address; <role>_port a TCP port no other service of the host
    takes."""
    found: list[Refusal] = []
    address = str(hv.get(f"{role}_address") or "")
    try:
        ipaddress.ip_address(address)
    except ValueError:
        found.append(
            (
                f"{role}_address",
                host,
                f" is {address!r}, not an IP address: the exporter listens there and Prometheus "
                "scrapes it there. Give the host's private address, or leave it unset (the host's "
                "celery_private_address, else 127.0.0.1).",
            )
        )
    port = whole(hv.get(f"{role}_port"))
    if port is not None and not 1 <= port <= 65535:
        found.append((f"{role}_port", host, f" is {port}: give a TCP port from 1 to 65535."))
    elif port is not None:
        for other, value in taken.items():
            if whole(value) == port:
                found.append(
                    (
                        f"{role}_port",
                        host,
                        f" is {port}, which {other} takes on this host: give the exporter a "
                        "port of its own.",
                    )
                )
    return found


def redis_exporter_errors(host: str, hv: Mapping[str, Any]) -> list[Refusal]:
    """A broker host with redis_exporter_enabled: the exporter's password (set, long enough, not a
    sample, carried by its environment file and Redis's configuration), its ACL user (a word of
    its own), where it listens, the database it reads."""
    sandbox = truthy(hv.get("celery_toolkit_sandbox", False))
    found: list[Refusal] = []
    password = hv.get("redis_exporter_password")
    password = "" if password is None else str(password)
    if len(password) < 16:
        found.append(
            (
                "redis_exporter_password",
                host,
                f" is {'empty' if not password else 'too short'} while redis_exporter_enabled is "
                "true: set it (at least 16 characters) in the inventory, encrypted with "
                "ansible-vault, or set redis_exporter_enabled to false.",
            )
        )
    elif not sandbox and any(marker in password.lower() for marker in PLACEHOLDERS):
        found.append(
            (
                "redis_exporter_password",
                host,
                " still holds a sample value: replace it with a real secret (and ansible-vault "
                "encrypt the file it lives in).",
            )
        )
    elif kind := control(password):
        found.append(
            (
                "redis_exporter_password",
                host,
                f" holds {kind}, which neither the exporter's environment file nor Redis's "
                "configuration can carry: choose a password without control characters (any "
                "printable character is fine).",
            )
        )
    user = str(hv.get("redis_exporter_user") or "")
    others = {str(u.get("name")) for u in hv.get("redis_acl_users") or [] if isinstance(u, Mapping)}
    if not ACL_NAME.match(user) or user in {"default", str(hv.get("redis_admin_user"))} | others:
        found.append(
            (
                "redis_exporter_user",
                host,
                f" is {user!r}: the exporter logs into Redis as a user of its own, a plain word "
                "(letters, digits, '.', '_' and '-') that is not `default`, redis_admin_user nor "
                "a name of redis_acl_users, e.g. redis-exporter.",
            )
        )
    found += _exporter_listen_errors(
        host,
        hv,
        "redis_exporter",
        {"redis_port": hv.get("redis_port"), "node_exporter_port": hv.get("node_exporter_port")},
    )
    database = whole(hv.get("redis_exporter_database"))
    databases = whole(hv.get("redis_databases"))
    if database is not None and databases is not None and not 0 <= database < databases:
        found.append(
            (
                "redis_exporter_database",
                host,
                f" is {database}: Redis has databases 0 to {databases - 1} (redis_databases). Give "
                "the database of the app's broker URL (the number after its last '/').",
            )
        )
    queues = hv.get("redis_exporter_queues")
    if isinstance(queues, list) and any(not str(q) or control(q) for q in queues):
        found.append(
            (
                "redis_exporter_queues",
                host,
                " holds an empty queue name or one with a control character: list the app's "
                "queues as the app names them, or leave it unset (every queue the app uses).",
            )
        )
    for address in hv.get("redis_firewall_monitor_allowed") or []:
        try:
            ipaddress.ip_network(str(address), strict=False)
        except ValueError:
            found.append(
                (
                    "redis_firewall_monitor_allowed",
                    host,
                    f" holds {str(address)!r}, not an IP address or network: nftables would "
                    "refuse the broker's table. List the monitor hosts' addresses (10.0.0.9, "
                    "10.0.0.0/24).",
                )
            )
    return found


def node_exporter_errors(host: str, hv: Mapping[str, Any], runs_redis: bool) -> list[Refusal]:
    """A host with node_exporter_enabled: where it listens, its extra options (one word each:
    Debian's unit splits ARGS at spaces; not the ones the role sets)."""
    taken = {"flower_port": hv.get("flower_port")}
    if runs_redis:
        taken["redis_port"] = hv.get("redis_port")
        taken["redis_exporter_port"] = hv.get("redis_exporter_port")
    found = _exporter_listen_errors(host, hv, "node_exporter", taken)
    args = hv.get("node_exporter_extra_args")
    for arg in args if isinstance(args, list) else []:
        text = str(arg)
        if not EXPORTER_ARG.match(text) or text.split("=")[0] in EXPORTER_OWN_ARGS:
            found.append(
                (
                    "node_exporter_extra_args",
                    host,
                    f" holds {text!r}: give node_exporter's options one word each, '--name' or "
                    "'--name=value' without spaces (Debian's unit splits its options at spaces), "
                    "and not --web.listen-address nor --collector.textfile.directory (set from "
                    "node_exporter_address and node_exporter_port).",
                )
            )
    return found


def package_exporter_errors(
    brokers: list[str], workers: list[str], settings: Settings
) -> list[Refusal]:
    found: list[Refusal] = []
    for host in brokers:
        hv = settings[host]
        if truthy(hv.get("redis_exporter_enabled", False)):
            found += redis_exporter_errors(host, hv)
    for host in dict.fromkeys(brokers + workers):
        hv = settings[host]
        if truthy(hv.get("node_exporter_enabled", False)):
            found += node_exporter_errors(host, hv, host in brokers)
    return found


def celery_spec_errors(results: Mapping[str, Iterable[Mapping[str, Any]]]) -> list[str]:
    """validate_argument_spec's results per host (a loop over the host's roles) -> one message
    per error, naming every host it is found on and the role whose README lists the variable."""
    hosts: dict[tuple[str, str], list[str]] = {}
    for host, loop in results.items():
        for result in loop or []:
            for error in result.get("argument_errors") or []:
                hosts.setdefault((str(error), str(result.get("item"))), []).append(host)
    return [
        f"{error} (on {hosts_phrase(where)}; roles/{role}/README.md lists the variable)"
        for (error, role), where in hosts.items()
    ]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            f.__name__: f
            for f in (
                celery_inventory_errors,
                celery_rule_variables,
                celery_spec_errors,
                celery_exporter_errors,
            )
        }
