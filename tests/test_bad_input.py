"""Bad input never reaches a host: each broken inventory fails deploy.yml's validation with a
message naming the variable (or queue, group, host) and the fix, before any play that touches
a host starts.

Each case is a small inventory written to a temporary folder. Its hosts are containers that
do not exist, so a task that reached a host would end "unreachable": the recap must show none,
and no play after the validation may start. Cases that set no variable in common share one
inventory and one run (GROUP_SIZE), where the refusal must hold each one's message as its own;
a case whose message the shared run does not show that way runs alone.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SPLIT = yaml.safe_load((ROOT / "roles/celery_workers/defaults/main.yml").read_text())[
    "celery_workers_groups"
]
DEFAULT_ROUTES = yaml.safe_load((ROOT / "roles/celery_app/defaults/main.yml").read_text())[
    "celery_app_routes"
]
SOUND = {
    "redis_password": "a-real-broker-secret-0123456789",
    # the broker URL logs in as `default`, which is off unless enabled
    "redis_default_user_enabled": True,
    "celery_app_broker_url": "redis://:a-real-broker-secret-0123456789@10.0.0.1:6379/0",
    "flower_basic_auth_user": "ops",
    "flower_basic_auth_password": "a-real-flower-secret-42",
    # issue 20: the Redis exporter (on by default) logs in as a user of its own
    "redis_exporter_password": "a-real-exporter-secret-0123",
    # the controller's import of the app builds into this checkout's cache, as the scenarios do
    "celery_app_wheelhouse_cache": str(ROOT / ".cache/wheelhouse"),
}
# Any file on the controller: the TLS rules check that a certificate's file exists.
A_FILE = str(ROOT / "README.md")
ALL = "vm1, vm2 and vm3"


def broker_password(password: str) -> dict:
    """redis_password and the broker URL carrying it, percent-encoded as it must be."""
    return {
        "redis_password": password,
        "celery_app_broker_url": f"redis://:{quote(password, safe='')}@10.0.0.1:6379/0",
    }


def url(userinfo: str = ":a-real-broker-secret-0123456789", host: str = "10.0.0.1:6379") -> dict:
    return {"celery_app_broker_url": f"redis://{userinfo}@{host}/0"}


def groups(**changes_by_name):
    """The default split layout with some fields of some groups changed."""
    layout = copy.deepcopy(SPLIT)
    for group in layout:
        group.update(changes_by_name.get(group["name"], {}))
    return layout


# (id, group_vars/all overrides, host_vars by host (over the fixture's), expected message). The
# inventory: vm1, vm2 and vm3 run workers and Flower, vm1 also Redis (on 10.0.0.1) and beat.
CASES = [
    (
        "routed-queue-without-consumer",
        {"celery_workers_groups": SPLIT[:1]},
        {},
        "queue 'low' has no consumer: the app sends 3 task(s) there "
        "(refapp.tasks.heavy.scrape_site",
    ),
    (
        "group-consumes-undeclared-queue",
        {"celery_workers_groups": groups(fast={"queues": ["high", "default", "hihg"]})},
        {},
        f"worker group 'fast' on {ALL} consumes 'hihg', not declared by the app",
    ),
    (
        "group-consumes-undeclared-queue-with-celery_app_queues-set",
        {
            "celery_app_queues": ["high", "default", "low"],
            "celery_workers_groups": groups(fast={"queues": ["high", "default", "emial_tasks"]}),
        },
        {},
        f"worker group 'fast' on {ALL} consumes 'emial_tasks', not declared by the app (its "
        "queues: high, default, low)",
    ),
    (
        "group-without-queues",
        {"celery_workers_groups": SPLIT + [{**SPLIT[0], "name": "idle", "queues": []}]},
        {},
        f"worker group 'idle' on {ALL} consumes no queue",
    ),
    (
        "beat-on-two-hosts",
        {},
        {"vm2": {"celery_workers_beat_enabled": True}},
        "beat is enabled on 2 hosts (vm1, vm2)",
    ),
    (
        "beat-on-no-host",
        {"celery_workers_beat_enabled": False},
        {},
        "no host runs beat, so no periodic task is ever sent",
    ),
    (
        "group-name-not-a-systemd-instance",
        {"celery_workers_groups": groups(fast={"name": "Fast Workers"})},
        {},
        f"worker group 'Fast Workers' on {ALL} (celery_workers_groups): the name must be lowercase",
    ),
    (
        "group-name-with-a-slash",
        {"celery_workers_groups": groups(fast={"name": "fast/high"})},
        {},
        f"worker group 'fast/high' on {ALL} (celery_workers_groups): the name must be lowercase",
    ),
    (
        "group-name-twice",
        {"celery_workers_groups": SPLIT + [{**SPLIT[1], "queues": ["low"]}]},
        {},
        f"worker group 'slow' on {ALL} appears twice",
    ),
    (
        "concurrency-zero",
        {"celery_workers_groups": groups(fast={"concurrency": 0})},
        {},
        f"worker group 'fast' on {ALL} (celery_workers_groups): concurrency must be a whole "
        "number above 0, not 0",
    ),
    (
        "group-field-of-the-wrong-type",
        {"celery_workers_groups": groups(fast={"concurrency": "many"})},
        {},
        "argument 'concurrency' is of type str found in 'celery_workers_groups'. and we were "
        "unable to convert to int: \"'many'\" cannot be converted to an int (on vm1, vm2 and "
        "vm3; roles/celery_workers/README.md lists the variable)",
    ),
    (
        "unknown-pool",
        {"celery_workers_groups": groups(slow={"pool": "fork"})},
        {},
        "value of pool must be one of: prefork, threads, solo, gevent, eventlet, got: fork "
        f"found in celery_workers_groups (on {ALL}",
    ),
    (
        "stop-timeout-below-task-time-limit",
        {"celery_workers_groups": groups(slow={"stop_timeout": 600})},
        {},
        f"worker group 'slow' on {ALL} has stop_timeout 600 s, shorter than the time limit of "
        "refapp.tasks.heavy.scrape_site (1800 s)",
    ),
    (
        "visibility-timeout-below-longest-task-and-countdown",
        {"celery_app_longest_countdown": 6000},
        {},
        "the broker's visibility_timeout (7200 s) is not longer than the longest task time limit",
    ),
    (
        "app-refuses-its-own-visibility-timeout",
        {"celery_app_environment": {"REFAPP_VISIBILITY_TIMEOUT": "600"}},
        {},
        "the app could not be imported on the controller",
    ),
    (
        "inventory-route-to-undeclared-queue",
        {"celery_app_routes": {"refapp.tasks.heavy.*": "bulk"}},
        {},
        "celery_app_routes sends 'refapp.tasks.heavy.*' to queue 'bulk', but the app sends "
        "refapp.tasks.heavy.",
    ),
    (
        "inventory-queues-differ-from-app",
        {
            "celery_app_queues": ["high", "default"],
            "celery_app_routes": {"refapp.tasks.notifications.*": "high"},
            "celery_workers_groups": SPLIT[:1],
        },
        {},
        "celery_app_queues (high, default) differs from the queues the app uses "
        "(high, default, low)",
    ),
    (
        "route-pattern-matches-no-task",
        {"celery_app_routes": {**DEFAULT_ROUTES, "refapp.tasks.notifcations.*": "high"}},
        {},
        "celery_app_routes pattern 'refapp.tasks.notifcations.*' matches no task the app registers",
    ),
    (
        "queues-unknown-without-the-app",
        {"celery_app_check_routing": False},
        {},
        "celery_app_queues is empty and celery_app_check_routing is false",
    ),
    (
        "broker-client-missing",
        {
            "celery_app_source": str(ROOT / "tests/apps/djangoshop"),
            "celery_app_constraints": "",
            "celery_app_module": "shop",
            "celery_app_broker_requirements": [],
            "celery_app_environment": {"DJANGO_SETTINGS_MODULE": "shop.settings"},
            "celery_workers_groups": groups(fast={"queues": ["celery"]}, slow={"queues": ["mail"]}),
        },
        {},
        "the app's broker client does not load (ModuleNotFoundError: No module named 'redis'): "
        "every worker would crash at start",
    ),
    (
        "app-module-does-not-import",
        {"celery_app_module": "refap"},
        {},
        "the app could not be imported on the controller (celery_app_source, celery_app_module): "
        "importing refap failed: ModuleNotFoundError: No module named 'refap'",
    ),
    (
        # the wheelhouse cannot be built: the line read first ends with pip's own error
        "extra-requirement-not-on-the-index",
        {"celery_app_extra_requirements": ["celery-toolkit-no-such-distribution==1.0"]},
        {},
        "-m pip download ... failed: "
        "ERROR: No matching distribution found for celery-toolkit-no-such-distribution==1.0",
    ),
    (
        "app-source-missing",
        {"celery_app_source": "/nonexistent/app"},
        {},
        "the app could not be imported on the controller (celery_app_source, celery_app_module)",
    ),
    (
        "app-constraints-missing",
        {"celery_app_constraints": "/nonexistent/constraints.txt"},
        {},
        "the app could not be imported on the controller (celery_app_source, celery_app_module)",
    ),
    (
        "app-requirements-missing",
        {"celery_app_requirements": "/nonexistent/requirements.txt"},
        {},
        f"celery_app_requirements on {ALL} names /nonexistent/requirements.txt, which is not a "
        "file on the controller",
    ),
    (
        "wheelhouse-cache-not-writable",
        {"celery_app_wheelhouse_cache": "/proc/celery-wheelhouse"},
        {},
        "the app could not be imported on the controller (celery_app_source, celery_app_module)",
    ),
    (
        "extra-requirements-not-a-list",
        {"celery_app_extra_requirements": {"sentry-sdk": "2.0"}},
        {},
        "argument 'celery_app_extra_requirements' is of type dict and we were unable to convert "
        "to list",
    ),
    (
        "keep-releases-not-a-number",
        {"celery_app_keep_releases": "many"},
        {},
        "argument 'celery_app_keep_releases' is of type str and we were unable to convert to int",
    ),
    # issue 21: releases kept, log bounds
    (
        "keep-releases-one",
        {"celery_app_keep_releases": 1},
        {},
        f"celery_app_keep_releases on {ALL} is 1: a host whose new release fails the health gate "
        "returns to the one before it, which a value below 2 removes. Set it to 2 or more",
    ),
    (
        "keep-releases-zero",
        {"celery_app_keep_releases": 0},
        {},
        f"celery_app_keep_releases on {ALL} is 0: a host whose new release fails the health gate",
    ),
    (
        "journal-max-use-journald-cannot-read",
        {"celery_app_journal_max_use": "1 GB"},
        {},
        f"celery_app_journal_max_use on {ALL} is '1 GB': give a size journald reads, above 0",
    ),
    (
        "log-rate-limit-interval-zero",
        {"celery_app_log_rate_limit_interval": "0"},
        {},
        f"celery_app_log_rate_limit_interval on {ALL} is '0': give a time span systemd reads, "
        "above 0",
    ),
    (
        "log-rate-limit-burst-zero",
        {"celery_app_log_rate_limit_burst": 0},
        {},
        f"celery_app_log_rate_limit_burst on {ALL} is 0: give at least 1 message per interval",
    ),
    (
        "log-max-bytes-supervisord-cannot-read",
        {"celery_app_log_max_bytes": "50M"},
        {},
        f"celery_app_log_max_bytes on {ALL} is '50M': give a size supervisord reads, above 0",
    ),
    (
        "log-backups-negative",
        {"celery_app_log_backups": -1},
        {},
        f"celery_app_log_backups on {ALL} is -1: give how many rotated files to keep, 0 or more",
    ),
    (
        "rollback-to-previous-not-a-boolean",
        {"celery_app_rollback_to_previous": "perhaps"},
        {},
        "argument 'celery_app_rollback_to_previous' is of type str and we were unable to convert "
        "to bool",
    ),
    (
        "broker-password-empty",
        {"redis_password": ""},
        {},
        "redis_password on vm1 is empty: set it (at least 16 characters)",
    ),
    (
        "broker-password-sample",
        {"redis_password": "CHANGE-ME-at-least-16-characters"},
        {},
        "redis_password on vm1 still holds a sample value",
    ),
    (
        "broker-password-from-sandbox",
        {"redis_password": "sandbox-broker-password-not-secret"},
        {},
        "redis_password on vm1 still holds a sample value",
    ),
    (
        "flower-password-missing",
        {"flower_basic_auth_password": ""},
        {},
        f"flower_basic_auth_password on {ALL} is empty",
    ),
    (
        "broker-url-missing",
        {"celery_app_broker_url": ""},
        {},
        f"celery_app_broker_url on {ALL} is empty",
    ),
    (
        "app-name-not-a-user-or-unit",
        {"celery_app_name": "Shop API"},
        {},
        f"celery_app_name on {ALL} is 'Shop API': it names the app's system user, /opt/<name>, "
        "/etc/<name> and its systemd units",
    ),
    (
        "app-user-root",
        {"celery_app_user": "root"},
        {},
        f"celery_app_user on {ALL} is 'root', an account the system (or the broker) already has",
    ),
    (
        "app-group-root",
        {"celery_app_group": "root"},
        {},
        f"celery_app_group on {ALL} is 'root', an account the system (or the broker) already has",
    ),
    (
        "base-dir-a-system-folder",
        {"celery_app_base_dir": "/usr/local"},
        {},
        f"celery_app_base_dir on {ALL} is /usr/local, a folder the system owns",
    ),
    (
        "config-dir-with-a-space",
        {"celery_app_config_dir": "/etc/ref app"},
        {},
        f"celery_app_config_dir on {ALL} is '/etc/ref app': it must be an absolute path",
    ),
    (
        "private-address-not-an-address",
        {},
        {"vm2": {"celery_private_address": "vm-2.internal"}},
        "celery_private_address on vm2 is 'vm-2.internal', not an IP address",
    ),
    (
        "broker-url-wrong-password",
        url(":another-secret-0123456789"),
        {},
        f"celery_app_broker_url on {ALL} authenticates as Redis's default user with a password "
        "that is not redis_password of vm1",
    ),
    (
        "broker-url-logs-in-as-default-which-is-off",
        {"redis_default_user_enabled": False},
        {},
        f"celery_app_broker_url on {ALL} logs in as Redis's default user, which is off on vm1",
    ),
    (
        "broker-url-password-without-colon",
        url("a-real-broker-secret-0123456789"),
        {},
        f"celery_app_broker_url on {ALL} has a secret before '@' but no ':' in front of it",
    ),
    (
        "broker-url-unknown-acl-user",
        url("shop:a-real-broker-secret-0123456789"),
        {},
        f"celery_app_broker_url on {ALL} authenticates as the Redis user 'shop', which is not in "
        "redis_acl_users of vm1",
    ),
    (
        "broker-url-loopback-from-hosts-without-redis",
        url(host="127.0.0.1:6379"),
        {},
        "celery_app_broker_url on vm2 and vm3 points at 127.0.0.1, the host itself, which runs "
        "no Redis",
    ),
    (
        "broker-url-address-redis-does-not-listen-on",
        url(host="10.1.2.3:6379"),
        {},
        f"celery_app_broker_url on {ALL} points at 10.1.2.3, where no broker host listens",
    ),
    (
        "bind-addresses-without-the-urls-address",
        {},
        {"vm1": {"redis_bind_addresses": ["127.0.0.1"]}},
        f"celery_app_broker_url on {ALL} points at 10.0.0.1, where no broker host listens "
        "(redis_bind_addresses: vm1: 127.0.0.1)",
    ),
    (
        "broker-url-wrong-port",
        url(host="10.0.0.1:6380"),
        {},
        f"celery_app_broker_url on {ALL} uses port 6380, but Redis on vm1 listens on redis_port "
        "6379",
    ),
    (
        "redis-on-another-port-than-the-url",
        {},
        {"vm1": {"redis_bind_addresses": ["127.0.0.1", "10.0.0.1"], "redis_port": 6380}},
        f"celery_app_broker_url on {ALL} uses port 6379, but Redis on vm1 listens on redis_port "
        "6380",
    ),
    (
        "flower-broker-url-unknown-user",
        {"flower_broker_url": "redis://flower:a-flower-broker-secret-0123@10.0.0.1:6379/0"},
        {},
        f"flower_broker_url on {ALL} authenticates as the Redis user 'flower', which is not in "
        "redis_acl_users of vm1",
    ),
    (
        "eviction-policy-drops-tasks",
        {"redis_maxmemory_policy": "allkeys-lru"},
        {},
        "redis_maxmemory_policy must be one of: noeviction, got: allkeys-lru",
    ),
    (
        "maxmemory-redis-cannot-read",
        {"redis_maxmemory": "half the RAM"},
        {},
        "redis_maxmemory on vm1 is 'half the RAM': Redis reads bytes",
    ),
    (
        "rolling-batch-of-zero-hosts",
        {"celery_deploy_batch": 0},
        {},
        "celery_deploy_batch must be a number of hosts (1 or more), a percentage from '1%' to "
        "'100%', or a list of those; got 0",
    ),
    (
        "unknown-process-manager",
        {},
        {"vm2": {"celery_process_manager": "runit"}},
        "value of celery_process_manager must be one of: systemd, supervisor, got: runit (on vm2;",
    ),
    (
        "unknown-process-manager-on-every-host",
        {"celery_process_manager": "runit"},
        {},
        "value of celery_process_manager must be one of: systemd, supervisor, got: runit (on "
        f"{ALL};",
    ),
    (
        "systemd-only-setting-under-supervisor",
        {"celery_process_manager": "supervisor", "celery_app_memory_deny_write_execute": True},
        {},
        f"celery_app_memory_deny_write_execute on {ALL} is true, where celery_process_manager is "
        "'supervisor': it is a systemd setting",
    ),
    (
        "health-timeout-zero",
        {"celery_workers_health_timeout": 0},
        {},
        f"celery_workers_health_timeout on {ALL} is 0: a worker group would have no time",
    ),
    (
        "layout-name-not-a-name",
        {"celery_workers_layout_name": "Split Layout"},
        {},
        f"celery_workers_layout_name on {ALL} is 'Split Layout'",
    ),
    (
        "unknown-worker-loglevel",
        {"celery_workers_loglevel": "LOUD"},
        {},
        "value of celery_workers_loglevel must be one of",
    ),
    (
        "idle-timeout-breaks-kombu",
        {"redis_timeout": 300},
        {},
        "redis_timeout must be one of: 0, got: 300",
    ),
    (
        "broker-password-with-a-newline",
        broker_password("a-real-broker\nsecret-0123456789"),
        {},
        "redis_password on vm1 holds a newline: Redis's configuration ends a directive at a "
        "newline",
    ),
    (
        "broker-password-redis-config-cannot-hold",
        broker_password("a-real-broker\x00secret-0123456789"),
        {},
        "redis_password on vm1 holds a NUL: Redis's configuration ends a directive at a newline "
        "and the whole file at a NUL",
    ),
    (
        "environment-name-with-a-dash",
        {"celery_app_environment": {"PA-MODE": "on"}},
        {},
        f"celery_app_environment on {ALL}: 'PA-MODE' is not an environment variable name "
        "(letters, digits and '_', not starting with a digit): no environment file can carry it "
        "and the app could not read it. Rename it, e.g. 'PA_MODE'.",
    ),
    (
        "environment-value-with-a-newline",
        {"celery_app_environment": {"SECRET_KEY": "first line\nsecond line"}},
        {},
        f"celery_app_environment on {ALL}: the value of SECRET_KEY holds a newline, which an "
        "environment file (systemd's EnvironmentFile=, the toolkit's reader) cannot carry",
    ),
    (
        "environment-name-the-toolkit-sets",
        {"celery_app_environment": {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"}},
        {},
        f"celery_app_environment on {ALL} sets CELERY_BROKER_URL, which the toolkit sets itself "
        "(from celery_app_broker_url): remove it from celery_app_environment and set "
        "celery_app_broker_url.",
    ),
    (
        "result-backend-with-a-newline",
        {"celery_app_result_backend": "redis://10.0.0.1:6379/1\n"},
        {},
        f"celery_app_result_backend on {ALL} holds a newline",
    ),
    (
        "flower-password-with-a-comma",
        {"flower_basic_auth_password": "a-real,flower-secret-42"},
        {},
        f"flower_basic_auth_password on {ALL} holds ',': Flower reads FLOWER_BASIC_AUTH as a "
        "comma-separated list of user:password pairs",
    ),
    (
        "flower-user-with-a-colon",
        {"flower_basic_auth_user": "ops:admin"},
        {},
        f"flower_basic_auth_user on {ALL} holds ':', which HTTP Basic auth (RFC 7617) does not "
        "allow in a user",
    ),
    (
        "flower-on-the-port-redis-listens-on",
        {"flower_port": 6379},
        {},
        "flower_port on vm1 is 6379, the port Redis listens on there (redis_port)",
    ),
    (
        "flower-beyond-loopback-without-tls",
        {},
        {"vm2": {"flower_address": "10.0.0.2"}},
        "flower_address on vm2 is 10.0.0.2, beyond loopback, but Flower has no TLS",
    ),
    (
        "flower-certificate-missing",
        {"flower_tls_cert_file": "/nonexistent/flower.pem", "flower_tls_key_file": A_FILE},
        {},
        f"flower_tls_cert_file on {ALL} names /nonexistent/flower.pem, which is not a file on the "
        "controller",
    ),
    (
        "flower-key-missing",
        {"flower_tls_cert_file": A_FILE, "flower_tls_key_file": "/nonexistent/flower.key"},
        {},
        f"flower_tls_key_file on {ALL} names /nonexistent/flower.key, which is not a file on the "
        "controller",
    ),
    (
        "flower-persistent-not-a-boolean",
        {"flower_persistent": "perhaps"},
        {},
        "argument 'flower_persistent' is of type str and we were unable to convert to bool",
    ),
    (
        "flower-max-tasks-not-a-number",
        {"flower_max_tasks": "lots"},
        {},
        "argument 'flower_max_tasks' is of type str and we were unable to convert to int",
    ),
    (
        "acl-user-name-with-a-space",
        {"redis_acl_users": [{"name": "shop app", "password": "shop-broker-secret-0123"}]},
        {},
        "redis_acl_users on vm1: the user name 'shop app' is not a plain word",
    ),
    (
        "previous-password-equal-to-the-new-one",
        {"redis_password_previous": "a-real-broker-secret-0123456789"},
        {},
        "redis_password_previous on vm1: it is redis_password itself: nothing is rotated",
    ),
    (
        "acl-user-previous-password-without-a-password",
        {
            "redis_acl_users": [
                {"name": "shop", "password": "", "previous_password": "shop-broker-secret-0123"}
            ]
        },
        {},
        "redis_acl_users on vm1: the previous_password of user 'shop' is set without its password",
    ),
    (
        "admin-user-named-default",
        {"redis_admin_user": "default"},
        {},
        "redis_admin_user on vm1 is 'default': the administrator is a Redis user of its own",
    ),
    (
        "acl-rules-over-two-lines",
        {"redis_acl_celery_rules": "~* &*\n+@all"},
        {},
        "redis_acl_celery_rules on vm1 holds a newline: the rules are one line",
    ),
    (
        "flower-acl-rules-over-two-lines",
        {"redis_acl_flower_rules": "~* &*\n+@all"},
        {},
        "redis_acl_flower_rules on vm1 holds a newline: the rules are one line",
    ),
    (
        "broker-url-password-not-url-encoded",
        {
            "redis_password": "a-real/broker-secret-0123456789",
            "celery_app_broker_url": "redis://:a-real/broker-secret-0123456789@10.0.0.1:6379/0",
        },
        {},
        f"celery_app_broker_url on {ALL} carries its password without URL-encoding: written as "
        "it is, a password ends the URL's parts at '/', '?', '#', '@', ';' or a space, and its "
        "'%' starts an escape. Write redis://:{{ vault_redis_password | urlencode | replace('/', "
        "'%2F') }}@HOST:PORT/DB",
    ),
    (
        "tls-broker-without-certificate",
        {"redis_tls_enabled": True, "redis_tls_key_file": A_FILE, "redis_tls_ca_file": A_FILE},
        {},
        "redis_tls_cert_file on vm1 is empty, but redis_tls_enabled is true",
    ),
    (
        "tls-broker-key-missing",
        {
            "redis_tls_enabled": True,
            "redis_tls_cert_file": A_FILE,
            "redis_tls_key_file": "/nonexistent/broker.key",
            "redis_tls_ca_file": A_FILE,
        },
        {},
        "redis_tls_key_file on vm1 names /nonexistent/broker.key, which is not a file",
    ),
    (
        "tls-broker-ca-missing",
        {
            "redis_tls_enabled": True,
            "redis_tls_cert_file": A_FILE,
            "redis_tls_key_file": A_FILE,
            "redis_tls_ca_file": "/nonexistent/ca.pem",
        },
        {},
        "redis_tls_ca_file on vm1 names /nonexistent/ca.pem, which is not a file",
    ),
    (
        "broker-ca-file-missing",
        {"celery_app_broker_ca_file": "/nonexistent/ca.pem"},
        {},
        f"celery_app_broker_ca_file on {ALL} names /nonexistent/ca.pem, which is not a file",
    ),
]

# The argument spec's type checks: (variable, a value of the wrong type, the type it is, the
# type the spec says).
WRONG_TYPES = [
    ("redis_protected_mode", "perhaps", "str", "bool"),
    ("redis_tcp_keepalive", "often", "str", "int"),
    ("redis_appendonly", "perhaps", "str", "bool"),
    ("redis_save", {"3600": 1}, "dict", "list"),
    ("redis_databases", "many", "str", "int"),
    ("redis_firewall_enabled", "perhaps", "str", "bool"),
    ("redis_firewall_allowed", {"10.0.0.2": True}, "dict", "list"),
    ("redis_extra_config", {"io-threads": 4}, "dict", "list"),
    # issue 22: a replicated broker's numbers (their values: REPLICATED_CASES below)
    ("redis_sentinel_port", "high", "str", "int"),
    ("redis_sentinel_quorum", "most", "str", "int"),
    ("redis_sentinel_down_after_ms", "soon", "str", "int"),
    ("redis_sentinel_failover_timeout_ms", "later", "str", "int"),
    ("redis_min_replicas_to_write", "some", "str", "int"),
    ("redis_min_replicas_max_lag", "long", "str", "int"),
]
CASES += [
    (
        f"{name}-of-the-wrong-type",
        {name: value},
        {},
        f"argument '{name}' is of type {given} and we were unable to convert to {spec}",
    )
    for name, value, given, spec in WRONG_TYPES
]
# issue 20: celery_exporter
CASES += [
    (
        "exporter-enabled-not-a-boolean",
        {"celery_exporter_enabled": "perhaps"},
        {},
        "argument 'celery_exporter_enabled' is of type str and we were unable to convert to bool",
    ),
    (
        "exporter-address-not-an-ip-address",
        {"celery_exporter_address": "worker one"},
        {},
        f"celery_exporter_address on {ALL} is 'worker one', not an IP address: the exporter "
        "binds it",
    ),
    (
        "exporter-port-not-a-number",
        {"celery_exporter_port": "metrics"},
        {},
        "argument 'celery_exporter_port' is of type str and we were unable to convert to int",
    ),
    (
        "exporter-on-flowers-port",
        {"celery_exporter_port": 5555},
        {},
        f"celery_exporter_port on {ALL} is 5555, the port of flower_port there: the exporter could "
        "not listen",
    ),
    (
        "exporter-port-out-of-range",
        {"celery_exporter_port": 70000},
        {},
        f"celery_exporter_port on {ALL} is 70000: a TCP port is 1 to 65535",
    ),
    (
        "exporter-interval-zero",
        {"celery_exporter_interval": 0},
        {},
        f"celery_exporter_interval on {ALL} is 0: the exporter needs at least 1 second between two "
        "collections",
    ),
]
# Variables that are str with no rule to break: any text is a value the toolkit can use.
# Entry-point options that every call passes (include_role vars, above any inventory's value).
NO_REFUSAL = {
    "celery_workers_restart_token": "any text: its change restarts the groups (a fingerprint)",
    "flower_restart_token": "any text: its change restarts Flower (a fingerprint)",
    "celery_process_under": "passed by every call of the seam (the manager to act under)",
    "celery_process_processes": "passed by every call of the seam (the processes to act on)",
    "celery_deploy_stranded_refuse": "set by the playbook that counts (deploy.yml: refuse, "
    "move-queues.yml: count only); its argument spec checks the type",
}
# issue 21: queued messages a deploy would strand
CASES += [
    (
        "drop-queued-not-a-boolean",
        {"celery_deploy_drop_queued": "perhaps"},
        {},
        "argument 'celery_deploy_drop_queued' is of type str and we were unable to convert to bool",
    ),
    (
        "move-into-a-queue-nobody-consumes",
        {"celery_deploy_move_into": "lost"},
        {},
        f"celery_deploy_move_into on {ALL} is 'lost', a queue no worker group of the layout "
        "consumes (celery_workers_groups: default, high, low): name one of those",
    ),
]
CHOICES_REFUSED = {
    "celery_deploy_mark_state": ("gone", "value of celery_deploy_mark_state must be one of"),
    # refused by their argument spec's choices, in other cases of this matrix or here
    "redis_appendfsync": ("never", "value of redis_appendfsync must be one of"),
    "redis_loglevel": ("loud", "value of redis_loglevel must be one of"),
}
CASES += [
    (f"{name}-not-a-choice", {name: value}, {}, message)
    for name, (value, message) in CHOICES_REFUSED.items()
]


# issue 20: exporters (roles/redis_exporter on vm1, the broker; roles/node_exporter on every host)
CASES += [
    (
        "exporter-password-missing",
        {"redis_exporter_password": ""},
        {},
        "redis_exporter_password on vm1 is empty while redis_exporter_enabled is true: set it",
    ),
    (
        "exporter-password-sample",
        {"redis_exporter_password": "CHANGE-ME-exporter-at-least-16"},
        {},
        "redis_exporter_password on vm1 still holds a sample value",
    ),
    (
        "exporter-password-with-a-newline",
        {"redis_exporter_password": "a-real-exporter\nsecret-0123"},
        {},
        "redis_exporter_password on vm1 holds a newline, which neither the exporter's environment "
        "file nor Redis's configuration can carry",
    ),
    (
        "exporter-disabled-flag-of-the-wrong-type",
        {"redis_exporter_enabled": "perhaps"},
        {},
        "argument 'redis_exporter_enabled' is of type str and we were unable to convert to bool",
    ),
    (
        "exporter-user-is-the-admin",
        {"redis_exporter_user": "admin"},
        {},
        "redis_exporter_user on vm1 is 'admin': the exporter logs into Redis as a user of its own",
    ),
    (
        "exporter-address-not-an-ip",
        {},
        {"vm1": {"redis_exporter_address": "broker.internal"}},
        "redis_exporter_address on vm1 is 'broker.internal', not an IP address",
    ),
    (
        "exporter-port-is-redis-port",
        {"redis_exporter_port": 6379},
        {},
        "redis_exporter_port on vm1 is 6379, which redis_port takes on this host",
    ),
    (
        "exporter-database-beyond-redis-databases",
        {"redis_exporter_database": 16},
        {},
        "redis_exporter_database on vm1 is 16: Redis has databases 0 to 15",
    ),
    (
        "exporter-queues-not-a-list",
        {"redis_exporter_queues": {"high": 1}},
        {},
        "argument 'redis_exporter_queues' is of type dict and we were unable to convert to list",
    ),
    (
        "exporter-queue-name-empty",
        {"redis_exporter_queues": ["high", ""]},
        {},
        "redis_exporter_queues on vm1 holds an empty queue name",
    ),
    (
        "monitor-firewall-source-not-an-address",
        {"redis_firewall_monitor_allowed": ["monitor.internal"]},
        {},
        "redis_firewall_monitor_allowed on vm1 holds 'monitor.internal', not an IP address",
    ),
    (
        "exporter-acl-rules-over-two-lines",
        {"redis_acl_exporter_rules": "%R~* -@all\n+info"},
        {},
        "redis_acl_exporter_rules on vm1 holds a newline: the rules are one line",
    ),
    (
        "node-exporter-flag-of-the-wrong-type",
        {"node_exporter_enabled": "perhaps"},
        {},
        "argument 'node_exporter_enabled' is of type str and we were unable to convert to bool",
    ),
    (
        "node-exporter-address-not-an-ip",
        {"node_exporter_address": "0.0.0.0:9100"},
        {},
        f"node_exporter_address on {ALL} is '0.0.0.0:9100', not an IP address",
    ),
    (
        "node-exporter-port-out-of-range",
        {"node_exporter_port": 91000},
        {},
        f"node_exporter_port on {ALL} is 91000: give a TCP port from 1 to 65535",
    ),
    (
        "node-exporter-arg-with-a-space",
        {"node_exporter_extra_args": ["--collector.systemd.unit-include=a b"]},
        {},
        f"node_exporter_extra_args on {ALL} holds '--collector.systemd.unit-include=a b': give "
        "node_exporter's options one word each",
    ),
    (
        "node-exporter-arg-sets-the-listen-address",
        {"node_exporter_extra_args": ["--web.listen-address=0.0.0.0:9100"]},
        {},
        f"node_exporter_extra_args on {ALL} holds '--web.listen-address=0.0.0.0:9100'",
    ),
]

# issue 20: prometheus. The thresholds count on the monitor hosts, else on the first worker host
# (vm1 here). One case per kind of rule; tests/test_celery_alerts.py refuses every variable.
CASES += [
    (
        "prometheus-duration-not-a-duration",
        {"prometheus_alert_worker_down_for": "2 minutes"},
        {},
        "prometheus_alert_worker_down_for on vm1 is '2 minutes', not a Prometheus duration",
    ),
    *[
        (
            f"prometheus-durations-in-words-{n}",
            dict.fromkeys(names, "often"),
            {},
            f"{names[-1]} on vm1 is 'often', not a Prometheus duration",
        )
        for n, names in enumerate(
            [
                [
                    "prometheus_scrape_interval",
                    "prometheus_evaluation_interval",
                    "prometheus_retention",
                    "prometheus_alert_no_consumer_for",
                ],
                [
                    "prometheus_alert_queue_backlog_for",
                    "prometheus_alert_queue_age_for",
                    "prometheus_alert_beat_for",
                ],
                [
                    "prometheus_alert_stranded_for",
                    "prometheus_alert_failure_for",
                    "prometheus_alert_exporter_down_for",
                ],
                [
                    "prometheus_alert_redis_down_for",
                    "prometheus_alert_redis_memory_for",
                    "prometheus_alert_aof_for",
                ],
            ]
        )
    ],
    (
        "prometheus-restarts-zero",
        {"prometheus_alert_restarts": 0},
        {},
        "prometheus_alert_restarts on vm1 is 0: give a number of at least 1.",
    ),
    (
        "prometheus-counts-negative",
        {
            "prometheus_alert_queue_backlog": -1,
            "prometheus_alert_queue_age_seconds": -1,
            "prometheus_alert_stranded_margin_seconds": -1,
        },
        {},
        "prometheus_alert_stranded_margin_seconds on vm1 is -1: give a number of at least 0.",
    ),
    (
        "prometheus-ratios-above-one",
        {"prometheus_alert_redis_memory_ratio": 80, "prometheus_alert_failure_ratio": 1.5},
        {},
        "prometheus_alert_redis_memory_ratio on vm1 is 80: give a share above 0 and at most 1",
    ),
    (
        "prometheus-queue-threshold-unknown-key",
        {"prometheus_alert_queue_thresholds": {"high": {"age": 30}}},
        {},
        "prometheus_alert_queue_thresholds on vm1 gives queue 'high' {'age': 30}: give each "
        "queue a mapping of backlog (tasks) and/or age_seconds",
    ),
    (
        "prometheus-address-a-name",
        {},
        {"vm1": {"prometheus_address": "monitor.example"}},
        "prometheus_address on vm1 is 'monitor.example', not an IP address",
    ),
    (
        "prometheus-port-out-of-range",
        {"prometheus_port": 90900},
        {},
        "prometheus_port on vm1 is 90900: give a TCP port, 1 to 65535.",
    ),
    (
        "prometheus-flower-ca-missing",
        {"prometheus_flower_ca_file": "/nonexistent/ca.pem"},
        {},
        "prometheus_flower_ca_file on vm1 names /nonexistent/ca.pem, which is not a file",
    ),
    (
        "prometheus-enabled-of-the-wrong-type",
        {"prometheus_enabled": "perhaps"},
        {},
        "argument 'prometheus_enabled' is of type str and we were unable to convert to bool",
    ),
]
NO_REFUSAL["prometheus_output_dir"] = "any folder on the controller (monitoring.yml creates it)"

# issue 22: a replicated broker. On this single-broker inventory: min-replicas-to-write above 0,
# redis_nodes and redis_primary set to other hosts than the group broker's.
CASES += [
    (
        "min-replicas-on-a-single-broker",
        {"redis_min_replicas_to_write": 1},
        {},
        "redis_min_replicas_to_write on vm1 is 1: a broker without replicas would refuse every "
        "task. Give 0, or put 3 (or 5) hosts in the group broker.",
    ),
    (
        "redis-nodes-not-the-broker-group",
        {"redis_nodes": ["vm1", "vm2", "vm3"]},
        {},
        "redis_nodes on vm1 is ['vm1', 'vm2', 'vm3'], not the hosts of the group broker (vm1): "
        "every broker host is a node and no other host is",
    ),
    (
        "redis-primary-not-a-broker-host",
        {"redis_primary": "vm2"},
        {},
        "redis_primary on vm1 is 'vm2', not a host of the group broker (vm1): name the one to be "
        "the primary on the first deploy",
    ),
    (
        "sentinel-url-with-a-single-broker",
        {"celery_app_broker_url": "sentinel://:a-real-broker-secret-0123456789@/0"},
        {},
        f"celery_app_broker_url on {ALL} uses sentinel://, which is for a replicated broker "
        "(three or more hosts in the group broker, which holds 1): with one broker host write "
        "redis://USER:PASSWORD@HOST:PORT/DB",
    ),
    (
        "sentinel-result-backend-with-a-single-broker",
        {"celery_app_result_backend": "sentinel://:a-real-broker-secret-0123456789@/1"},
        {},
        f"celery_app_result_backend on {ALL} uses sentinel://, which is for a replicated broker "
        "(three or more hosts in the group broker, which holds 1)",
    ),
]
# The other cases of a replicated broker run on REPLICATED_BROKERS (each listening on
# 10.0.0.<n>), with the secrets a replicated broker needs in group_vars/all and the app's URL in
# the host-less Sentinel form (the toolkit names the sentinels; Flower's URL is the app's).
REPLICATED_BROKERS = ("vm1", "vm2", "vm3")
REPLICATED = {
    "redis_sentinel_password": "a-real-sentinel-$(pw)&#-0123",
    "redis_sentinel_node_password": "a-real-node-password-0123",
    "redis_replication_password": 'a replica\'s "pass word" & #04',
    "celery_app_broker_url": "sentinel://:a-real-broker-secret-0123456789@/0",
}
HOST_LEFT_OUT = (
    "leave the host out and write one part, sentinel://USER:PASSWORD@/DB: the toolkit writes "
    "one part per broker node itself (its redis_announce_address and redis_sentinel_port), so "
    "the app follows the primary through every failover."
)
SENTINEL_REWRITES = (
    "Sentinel rewrites its configuration file itself and writes this value back unquoted, so a "
    "space or a quote would stop the sentinel at its next start"
)
REPLICATED_CASES = [
    (
        "replicated-quoted-sentinel-password",
        {"redis_sentinel_password": 'sentinel-"quoted"-password-0123'},
        {},
        f"redis_sentinel_password on {ALL} holds a double quote: {SENTINEL_REWRITES}. Choose a "
        "password of printable ASCII without a space or a quote",
    ),
    (
        "replicated-sentinel-node-password-sample",
        {"redis_sentinel_node_password": "CHANGE-ME-node-password-0123"},
        {},
        f"redis_sentinel_node_password on {ALL} still holds a sample value",
    ),
    (
        "replicated-replication-password-empty",
        {"redis_replication_password": ""},
        {},
        f"redis_replication_password on {ALL} is empty: set it (at least 16 characters)",
    ),
    (
        "replicated-master-name-with-a-space",
        {"redis_sentinel_master_name": "celery main"},
        {},
        f"redis_sentinel_master_name on {ALL} is 'celery main': the sentinels' name of the "
        "primary (the clients' master_name) is one word of letters, digits, '.', '_' and '-'",
    ),
    (
        "replicated-sentinel-user-is-the-admin",
        {"redis_sentinel_node_user": "admin"},
        {},
        f"redis_sentinel_node_user on {ALL} is 'admin': the sentinels log in to every node as a "
        "Redis user of their own",
    ),
    (
        "replicated-replication-user-default",
        {"redis_replication_user": "default"},
        {},
        f"redis_replication_user on {ALL} is 'default': the replicas log in to the primary as a "
        "Redis user of their own",
    ),
    (
        "replicated-announce-address-not-listened-on",
        {},
        {"vm2": {"redis_announce_address": "10.0.0.9"}},
        "redis_announce_address on vm2 is 10.0.0.9, an address Redis does not listen on there "
        "(redis_bind_addresses: 127.0.0.1, 10.0.0.2)",
    ),
    (
        "replicated-quorum-no-majority",
        {"redis_sentinel_quorum": 1},
        {},
        f"redis_sentinel_quorum on {ALL} is 1: with 3 nodes give 0 (a majority, 2) or a number "
        "from 2 to 3",
    ),
    (
        "replicated-min-replicas-beyond-the-replicas",
        {"redis_min_replicas_to_write": 3},
        {},
        f"redis_min_replicas_to_write on {ALL} is 3: with 3 nodes give 0 (the primary never "
        "refuses a write) or a number from 1 to 2, its replicas",
    ),
    (
        "replicated-min-replicas-max-lag-zero",
        {"redis_min_replicas_max_lag": 0},
        {},
        f"redis_min_replicas_max_lag on {ALL} is 0: give the seconds within which a replica's "
        "acknowledgement counts",
    ),
    (
        "replicated-sentinel-port-is-redis-port",
        {"redis_sentinel_port": 6379},
        {},
        f"redis_sentinel_port on {ALL} is 6379, which redis_port takes on this host",
    ),
    (
        "replicated-down-after-zero",
        {"redis_sentinel_down_after_ms": 0},
        {},
        f"redis_sentinel_down_after_ms on {ALL} is 0: Sentinel refuses a time of 0 or less",
    ),
    (
        "replicated-failover-timeout-zero",
        {"redis_sentinel_failover_timeout_ms": 0},
        {},
        f"redis_sentinel_failover_timeout_ms on {ALL} is 0: Sentinel refuses a time of 0 or less",
    ),
    (
        "replicated-maxmemory-differs",
        {},
        {"vm3": {"redis_maxmemory": "512mb"}},
        "redis_maxmemory on vm3 is '512mb' there but '0' on vm1 and vm2: every node of a "
        "replicated broker needs the same value",
    ),
    (
        "replicated-password-differs",
        {},
        {"vm3": {"redis_password": "another-admin-password-0123"}},
        "redis_password on vm3 is not the one vm1 and vm2 have: every node of a replicated "
        "broker needs the same value",
    ),
    # the app's and Flower's URLs go through the sentinels
    (
        "replicated-broker-url-names-one-node",
        {"celery_app_broker_url": "redis://:a-real-broker-secret-0123456789@10.0.0.1:6379/0"},
        {},
        f"celery_app_broker_url on {ALL} names one node of the replicated broker (3 hosts in "
        "broker), a read-only replica after a failover: write it as sentinel://USER:PASSWORD@/DB "
        "(sentinel://:PASSWORD@/DB for Redis's default user), without a host (the password "
        "URL-encoded): the toolkit names every sentinel of the broker group.",
    ),
    (
        "replicated-flower-broker-url-with-a-host",
        {"flower_broker_url": "sentinel://:a-real-broker-secret-0123456789@10.0.0.1:26379/0"},
        {},
        f"flower_broker_url on {ALL} names a sentinel's address: {HOST_LEFT_OUT}",
    ),
    (
        "replicated-result-backend-wrong-password",
        {"celery_app_result_backend": "sentinel://:not-the-broker-secret-0123@/1"},
        {},
        f"celery_app_result_backend on {ALL} authenticates as Redis's default user with a "
        f"password that is not redis_password of {ALL}: write the URL as "
        "sentinel://:{{ vault_redis_password | urlencode | replace('/', '%2F') }}@/DB, or as a "
        "user of redis_acl_users.",
    ),
    (
        "replicated-broker-url-database-out-of-range",
        {"celery_app_broker_url": "sentinel://:a-real-broker-secret-0123456789@/16"},
        {},
        f"celery_app_broker_url on {ALL} names the database '16', but Redis on {ALL} has "
        "databases 0 to 15 (redis_databases): end the URL with /0 (or another of those).",
    ),
    (
        "replicated-flower-broker-url-without-a-database",
        {"flower_broker_url": "sentinel://:a-real-broker-secret-0123456789@"},
        {},
        f"flower_broker_url on {ALL} names no database: end it with /0 (or another database of "
        "redis_databases), as in sentinel://USER:PASSWORD@/0.",
    ),
    (
        "replicated-result-backend-names-one-node",
        {"celery_app_result_backend": "redis://:a-real-broker-secret-0123456789@10.0.0.2:6379/1"},
        {},
        f"celery_app_result_backend on {ALL} names one node of the replicated broker (3 hosts in "
        "broker), a read-only replica after a failover",
    ),
    (
        "replicated-broker-url-several-parts",
        {
            "celery_app_broker_url": "sentinel://:a-real-broker-secret-0123456789@10.0.0.1:26379/0;"
            "sentinel://:a-real-broker-secret-0123456789@10.0.0.2:26379/0"
        },
        {},
        f"celery_app_broker_url on {ALL} holds several parts (';'): {HOST_LEFT_OUT}",
    ),
]

VALIDATION_PLAY = "Validate the inventory before any host is changed"


def plays(stdout: str) -> list[str]:
    """The names of the plays that started."""
    return re.findall(r"^PLAY \[(.*)\] \**$", stdout, flags=re.M)


def refusal(stdout: str) -> list[str]:
    """The refusal as a user reads it: from the first error line to the play recap, without
    blank lines."""
    lines = stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(("[ERROR]", "fatal:")))
    recap = next(i for i, line in enumerate(lines) if line.startswith("PLAY RECAP"))
    return [line for line in lines[first:recap] if line.strip()]


def write_inventory(
    tmp_path: Path, overrides: dict, host_vars: dict | None = None, brokers: tuple = ("vm1",)
) -> Path:
    """vm1, vm2 and vm3 run workers and Flower; vm1 also Redis, listening on 10.0.0.1, and beat.
    `overrides` go to group_vars/all, `host_vars` (by host) over the fixture's host_vars.
    `brokers`: the group broker (issue 22: several hosts are a replicated broker, each listening
    on 10.0.0.<n>, with the secrets of REPLICATED)."""
    connection = {
        "ansible_connection": "community.docker.docker",
        "ansible_host": "celery-toolkit-bad-input-does-not-exist",
    }
    hosts = {h: dict(connection) for h in ("vm1", "vm2", "vm3")}
    workers = dict.fromkeys(hosts)
    own = {
        "vm1": {"redis_bind_addresses": ["127.0.0.1", "10.0.0.1"]},
        "vm2": {"celery_workers_beat_enabled": False},
        "vm3": {"celery_workers_beat_enabled": False},
    }
    for host in brokers:
        own[host]["redis_bind_addresses"] = ["127.0.0.1", f"10.0.0.{host[-1]}"]
    for host, variables in (host_vars or {}).items():
        own[host] = {**own[host], **variables}
    inventory = {
        "all": {
            "hosts": hosts,
            "children": {
                "broker": {"hosts": dict.fromkeys(brokers)},
                "celery_workers": {"hosts": workers},
                "flower": {"hosts": workers},
            },
        }
    }
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    replicated = REPLICATED if len(brokers) > 1 else {}
    (tmp_path / "group_vars/all.yml").write_text(
        yaml.safe_dump({**SOUND, **replicated, **overrides})
    )
    for host, variables in own.items():
        (tmp_path / f"host_vars/{host}.yml").write_text(yaml.safe_dump(variables))
    return tmp_path


def deploy(inventory: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_DEPRECATION_WARNINGS="false",
    )
    return subprocess.run(
        [
            str(Path(os.sys.executable).parent / "ansible-playbook"),
            "-i",
            str(inventory),
            str(ROOT / "playbooks/deploy.yml"),
            *extra,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def test_a_sound_inventory_passes_validation(tmp_path):
    """The control case: the same fixture without a defect gets past validation (and then
    fails to reach its non-existent hosts, which proves the fixture is otherwise usable). With
    pipelining the docker connection reports a missing container as the module's failure, not as
    UNREACHABLE. The app's name has a '_': every name validation accepts deploys
    (molecule/app-default-queue deploys my_app)."""
    proc = deploy(write_inventory(tmp_path, {"celery_app_name": "my_app"}))
    assert len(plays(proc.stdout)) > 1, proc.stdout[-3000:]
    assert "No such container: celery-toolkit-bad-input-does-not-exist" in proc.stdout


def test_secrets_of_every_printable_character_pass_validation_on_three_hosts(tmp_path):
    """The control case with secrets as users have them: a Django key (its whole alphabet, a
    space and both quotes) in the environment, Redis and Flower passwords with symbols, the URL
    carrying the password percent-encoded."""
    key = "abcdefghijklmnopqrstuvwxyz0123456789!@#$%^&*(-_=+) '\"\\`"
    password = "r3dis pass/with?#@;%'\"$(x)`"
    overrides = {
        "celery_app_environment": {"SECRET_KEY": key},
        "redis_password": password,
        "celery_app_broker_url": f"redis://:{quote(password, safe='')}@10.0.0.1:6379/0",
        "flower_basic_auth_password": "flower pass:'\"$#(x)",
    }
    proc = deploy(write_inventory(tmp_path, overrides))
    assert len(plays(proc.stdout)) > 1, proc.stdout[-3000:]
    assert "No such container: celery-toolkit-bad-input-does-not-exist" in proc.stdout


def refusal_items(stdout: str) -> list[list[str]]:
    """The refusal's messages (its `msg` list) as printed: each item's lines, item by item."""
    try:
        lines = refusal(stdout)
    except StopIteration:  # no error line or no recap: no refusal to read
        return []
    start = next((i for i, line in enumerate(lines) if line.strip() == "msg:"), len(lines))
    items: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("    - "):
            items.append([line])
        elif items and line.startswith("      "):
            items[-1].append(line)
        else:
            break
    return items


def fold(text: str) -> str:
    """Whitespace folded and, as the YAML callback writes it, a doubled quote made single."""
    return re.sub(r"\s+", " ", text).replace("''", "'")


def assert_refused_before_any_host(
    proc: subprocess.CompletedProcess, message: str, grouped: bool = False
) -> str:
    """The refusal holds `message`, once, no play after the validation started, nothing was
    reached or changed, and it is a few readable lines on this three-host inventory. Returns the
    output, whitespace folded. `grouped`: the run's inventory holds other cases' defects too, so
    the refusal lists their messages as well: the line budget then holds for the refusal's frame
    and this message's item, as it would alone."""
    out = re.sub(r"\s+", " ", proc.stdout + proc.stderr)
    assert proc.returncode != 0
    # as the YAML callback writes it: a quote inside a quoted string is doubled
    assert re.sub(r"\s+", " ", message) in out.replace("''", "'"), proc.stdout[-4000:]
    assert plays(proc.stdout) == [VALIDATION_PLAY]
    assert "UNREACHABLE" not in proc.stdout
    assert not re.search(r"unreachable=[1-9]", proc.stdout)
    assert not re.search(r"changed=[1-9]", proc.stdout)
    # no crash of the validation itself (a result read without the field it lacks)
    assert "has no attribute" not in out
    # said once for the whole inventory, by one host
    said = fold(proc.stdout.split("fatal:", 1)[1])
    assert said.count(re.sub(r"\s+", " ", message)) == 1, said
    assert "failed=1 " in proc.stdout and not re.search(r"failed=[2-9]", proc.stdout)
    # a few readable lines: no argument-spec dump, no traceback, no script source
    lines = refusal(proc.stdout)
    if grouped:
        # what a solo run's refusal would be: the frame (the error line, the task's origin, the
        # failed result's keys) and this message's item, within the same 20 lines
        items = refusal_items(proc.stdout)
        frame = len(lines) - sum(len(item) for item in items)
        own = [item for item in items if re.sub(r"\s+", " ", message) in fold(" ".join(item))]
        assert len(own) == 1 and frame + len(own[0]) <= 20, "\n".join(lines)
    else:
        assert len(lines) <= 20, "\n".join(lines)
    return out


# The matrix in fewer runs (each is an ansible-playbook of ~5 CPU-seconds, the bulk of pytest's
# time): cases that set none of the same variables share one inventory, up to GROUP_SIZE of them,
# and validation reports all their defects in one refusal. A case counts on its group's run only
# where that run's refusal has one message that is its own and no other case's; otherwise (a
# defect that stops the validation before another is looked at, or one message changed by another
# case's input) the case runs alone, on its own inventory, as every case did before.
GROUP_SIZE = 8


def case_variables(case: tuple) -> set[str]:
    _, overrides, host_vars, _ = case
    return set(overrides) | {name for variables in host_vars.values() for name in variables}


def case_groups(cases: list[tuple]) -> list[list[tuple]]:
    groups: list[list[tuple]] = []
    for case in cases:
        for group in groups:
            taken = set().union(*map(case_variables, group))
            if len(group) < GROUP_SIZE and not taken & case_variables(case):
                group.append(case)
                break
        else:
            groups.append([case])
    return groups


GROUPS = case_groups(CASES)
GROUP_OF = {case[0]: number for number, group in enumerate(GROUPS) for case in group}
# issue 22: the cases of a replicated broker, grouped alike on their own inventory
REPLICATED_GROUPS = case_groups(REPLICATED_CASES)
REPLICATED_GROUP_OF = {
    case[0]: number for number, group in enumerate(REPLICATED_GROUPS) for case in group
}


def merged(group: list[tuple]) -> tuple[dict, dict]:
    overrides: dict = {}
    host_vars: dict = {}
    for _, case_overrides, case_host_vars, _ in group:
        overrides.update(case_overrides)
        for host, variables in case_host_vars.items():
            host_vars.setdefault(host, {}).update(variables)
    return overrides, host_vars


@pytest.fixture(scope="session")
def group_run(tmp_path_factory):
    """Group number -> its run (once per pytest process: xdist keeps a group on one worker);
    `replicated`: a group of REPLICATED_CASES, on the inventory of REPLICATED_BROKERS."""
    runs: dict[tuple[bool, int], subprocess.CompletedProcess] = {}

    def run(number: int, replicated: bool = False) -> subprocess.CompletedProcess:
        if (replicated, number) not in runs:
            kind = "replicated-" if replicated else ""
            folder = tmp_path_factory.mktemp(f"bad-input-{kind}group-{number}")
            groups = REPLICATED_GROUPS if replicated else GROUPS
            brokers = REPLICATED_BROKERS if replicated else ("vm1",)
            runs[replicated, number] = deploy(
                write_inventory(folder, *merged(groups[number]), brokers=brokers)
            )
        return runs[replicated, number]

    return run


def own_message_in(proc: subprocess.CompletedProcess, case: tuple, group: list[tuple]) -> bool:
    """The group's refusal has exactly one message holding this case's, and that message holds
    no other case's of the group."""
    mine = re.sub(r"\s+", " ", case[3])
    others = [re.sub(r"\s+", " ", c[3]) for c in group if c[0] != case[0]]
    items = [fold(" ".join(item)) for item in refusal_items(proc.stdout)]
    holding = [item for item in items if mine in item]
    return len(holding) == 1 and not any(other in holding[0] for other in others)


@pytest.mark.parametrize(
    ("case_id", "overrides", "host_vars", "message"),
    [pytest.param(*c, marks=pytest.mark.xdist_group(f"bad-input-{GROUP_OF[c[0]]}")) for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input_is_refused_once_before_any_host(
    tmp_path, group_run, case_id, overrides, host_vars, message
):
    group = GROUPS[GROUP_OF[case_id]]
    case = (case_id, overrides, host_vars, message)
    proc = group_run(GROUP_OF[case_id]) if len(group) > 1 else None
    if proc is not None and own_message_in(proc, case, group):
        assert_refused_before_any_host(proc, message, grouped=True)
    else:
        proc = deploy(write_inventory(tmp_path, overrides, host_vars))
        assert_refused_before_any_host(proc, message)


@pytest.mark.parametrize(
    ("case_id", "overrides", "host_vars", "message"),
    [
        pytest.param(
            *c, marks=pytest.mark.xdist_group(f"bad-input-replicated-{REPLICATED_GROUP_OF[c[0]]}")
        )
        for c in REPLICATED_CASES
    ],
    ids=[c[0] for c in REPLICATED_CASES],
)
def test_bad_input_of_a_replicated_broker_is_refused_once_before_any_host(
    tmp_path, group_run, case_id, overrides, host_vars, message
):
    """issue 22: the group broker holds vm1, vm2 and vm3 (a primary and two replicas)."""
    group = REPLICATED_GROUPS[REPLICATED_GROUP_OF[case_id]]
    case = (case_id, overrides, host_vars, message)
    proc = group_run(REPLICATED_GROUP_OF[case_id], True) if len(group) > 1 else None
    if proc is not None and own_message_in(proc, case, group):
        assert_refused_before_any_host(proc, message, grouped=True)
    else:
        inventory = write_inventory(tmp_path, overrides, host_vars, brokers=REPLICATED_BROKERS)
        assert_refused_before_any_host(deploy(inventory), message)


def test_a_sound_replicated_broker_passes_validation(tmp_path):
    """The control case of REPLICATED_CASES: three broker hosts with the secrets a replicated
    broker needs, the workers (and Flower, through them) on the host-less Sentinel URL, a
    result backend on it too: no refusal, the deploy goes on (and fails to reach its
    non-existent hosts, as the single broker's control case)."""
    overrides = {"celery_app_result_backend": "sentinel://:a-real-broker-secret-0123456789@/1"}
    proc = deploy(write_inventory(tmp_path, overrides, brokers=REPLICATED_BROKERS))
    assert len(plays(proc.stdout)) > 1, proc.stdout[-3000:]
    assert "No such container: celery-toolkit-bad-input-does-not-exist" in proc.stdout


def test_a_sound_replicated_broker_passes_validation_with_flower_on_an_acl_user(tmp_path):
    """Flower's URL of its own, as an ACL user of the broker, through the sentinels."""
    overrides = {
        "redis_acl_users": [{"name": "flower", "password": "a-real-flower-broker-0123"}],
        "flower_broker_url": "sentinel://flower:a-real-flower-broker-0123@/0",
    }
    proc = deploy(write_inventory(tmp_path, overrides, brokers=REPLICATED_BROKERS))
    assert len(plays(proc.stdout)) > 1, proc.stdout[-3000:]
    assert "No such container: celery-toolkit-bad-input-does-not-exist" in proc.stdout


def test_an_even_number_of_broker_hosts_is_refused_once_before_any_host(tmp_path):
    """issue 22: two broker hosts cannot elect a new primary when one is lost."""
    proc = deploy(write_inventory(tmp_path, {}, brokers=("vm1", "vm2")))
    assert_refused_before_any_host(
        proc,
        "redis_nodes on vm1 and vm2 holds 2 nodes (vm1 and vm2): a replicated broker needs an "
        "odd number of them, at least 3, as each node runs a sentinel and a majority of the "
        "sentinels elects the new primary: 2 nodes cannot elect one when one is lost, 4 "
        "tolerate no more loss than 3. Put 3 (or 5) hosts in the group broker, or one for a "
        "broker without replicas.",
    )


def test_the_groups_keep_the_matrix_and_share_no_variable():
    """Every case is in one group; no two cases of a group set the same variable."""
    assert sorted(c[0] for group in GROUPS for c in group) == sorted(c[0] for c in CASES)
    assert sorted(c[0] for group in REPLICATED_GROUPS for c in group) == sorted(
        c[0] for c in REPLICATED_CASES
    )
    for group in GROUPS + REPLICATED_GROUPS:
        names = [name for case in group for name in case_variables(case)]
        assert len(names) == len(set(names)), [c[0] for c in group]


def role_variables() -> dict[str, str]:
    """Every variable of every role (roles/*/defaults/main.yml) -> its role."""
    found = {}
    for path in sorted(ROOT.glob("roles/*/defaults/main.yml")):
        for name in yaml.safe_load(path.read_text()) or {}:
            found[name] = path.parent.parent.name
    return found


def test_every_variable_of_every_role_has_a_refusal_case():
    """A variable added to a role gets its case here (or a reason it has none in NO_REFUSAL)."""
    tried = {name for _, overrides, _, _ in CASES + REPLICATED_CASES for name in overrides}
    tried |= {
        name
        for _, _, host_vars, _ in CASES + REPLICATED_CASES
        for v in host_vars.values()
        for name in v
    }
    missing = [
        f"{name} ({role})"
        for name, role in role_variables().items()
        if name not in tried and name not in NO_REFUSAL
    ]
    assert not missing, f"no refusal case for: {', '.join(missing)}"
    assert len(role_variables()) > 60  # the enumeration found the roles


def test_an_environment_name_is_data_never_a_command_on_the_controller(tmp_path):
    """The app's import on the controller gets celery_app_environment as its environment, which
    Ansible writes into a shell command line: a name holding ';' ran there as a command (and
    'PA-MODE' crashed the validation). The import waits for an environment that passes."""
    ran = tmp_path / "ran"
    name = f"X;touch {ran};Y"
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    proc = deploy(write_inventory(inventory, {"celery_app_environment": {name: "1"}}))
    assert_refused_before_any_host(
        proc, f"celery_app_environment on {ALL}: {name!r} is not an environment variable name"
    )
    assert not ran.exists()
    assert "could not be imported" not in proc.stdout


@pytest.mark.parametrize("tags", ["flower", "celery_workers,redis"])
def test_validation_runs_whatever_tags_are_asked_for(tmp_path, tags):
    """`deploy.yml --tags X` must not skip the checks: bad input is refused all the same."""
    proc = deploy(write_inventory(tmp_path, {"redis_password": ""}), "--tags", tags)
    assert proc.returncode != 0
    assert "redis_password on vm1 is empty" in re.sub(r"\s+", " ", proc.stdout)
    assert plays(proc.stdout) == [VALIDATION_PLAY]
    assert not re.search(r"changed=[1-9]", proc.stdout)


def test_the_matrix_is_at_least_fifteen_cases():
    assert len(CASES) >= 15
