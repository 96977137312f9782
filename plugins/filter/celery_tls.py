"""TLS between the VMs: the rules an inventory with TLS must follow, and redis-cli's quoting.

`celery_tls_errors` returns a list of messages, each naming the variable, the host and the fix;
an empty list means the inventory's TLS settings hold together. It runs on the controller before
any host is changed (playbooks/validate.yml) and never prints a secret. Each host's settings are
the inventory's values, else the roles' defaults (validate.yml's __validate_settings).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import (
    Refusal,
    binds,
    is_loopback,
    once,
    truthy,
)

# The file name of the broker's CA on a worker host, in the app's configuration folder: the
# celery_app role installs celery_app_broker_ca_file there (through celery_broker_ca_path).
CA_NAME = "broker-ca.pem"
REDIS_TLS_FILES = ("redis_tls_cert_file", "redis_tls_key_file", "redis_tls_ca_file")
FLOWER_TLS_FILES = ("flower_tls_cert_file", "flower_tls_key_file")


def _file_errors(host: str, hv: Mapping[str, Any], names: Iterable[str], why: str) -> list[Refusal]:
    errors: list[Refusal] = []
    for name in names:
        path = str(hv.get(name) or "")
        if not path:
            errors.append(
                (
                    name,
                    host,
                    f" is empty, but {why}: set it to a PEM file on the controller (for a test "
                    "fleet, playbooks/tls_test_ca.yml makes one).",
                )
            )
        elif not os.path.isfile(path):
            errors.append(
                (
                    name,
                    host,
                    f" names {path}, which is not a file on the controller: fix the path (for a "
                    "test fleet, run playbooks/tls_test_ca.yml first).",
                )
            )
    return errors


def celery_broker_ca_path(config_dir: str) -> str:
    """Where the toolkit puts the broker's CA on a worker host (celery_app_config_dir)."""
    return f"{str(config_dir).rstrip('/')}/{CA_NAME}"


def ca_path(hv: Mapping[str, Any]) -> str:
    return celery_broker_ca_path(str(hv["celery_app_config_dir"]))


def url_errors(
    name: str, where: str, url: str, hv: Mapping[str, Any], tls: bool | None
) -> list[Refusal]:
    """A broker or result-backend URL against the broker's TLS (None: a broker the inventory does
    not manage, whose TLS is unknown)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []  # celery_broker's broker_url_errors names it
    if parts.scheme not in ("redis", "rediss"):
        return []
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    path = ca_path(hv)
    tail = f"?ssl_cert_reqs=required&ssl_ca_certs={path}"
    if parts.scheme == "redis":
        if tls:
            return [
                (
                    name,
                    where,
                    " uses redis://, but the broker speaks TLS only (redis_tls_enabled): write it "
                    f"as rediss://USER:PASSWORD@HOST:PORT/DB{tail}.",
                )
            ]
        return []
    errors = []
    if tls is False:
        errors.append(
            (
                name,
                where,
                " uses rediss://, but the broker does not speak TLS (redis_tls_enabled is false "
                "on it): set redis_tls_enabled: true with its certificate (README: TLS between "
                "the VMs), or use redis://.",
            )
        )
    if query.get("ssl_cert_reqs", "").lower() not in ("required", "cert_required"):
        errors.append(
            (
                name,
                where,
                " uses rediss:// without ssl_cert_reqs=required: kombu would then accept any "
                f"certificate (anyone in between could read the traffic). End the URL with {tail}.",
            )
        )
    if query.get("ssl_ca_certs") != path:
        errors.append(
            (
                name,
                where,
                f" does not name the CA the toolkit installs ({path}, from "
                f"celery_app_broker_ca_file): end the URL with {tail}.",
            )
        )
    if not hv.get("celery_app_broker_ca_file"):
        errors.append(
            (
                "celery_app_broker_ca_file",
                where,
                f" is empty, but {name} uses rediss://: set it to the CA that signed the broker's "
                "certificate, a PEM file on the controller (the broker's redis_tls_ca_file).",
            )
        )
    return errors


def _broker_of(url: str, brokers: list[str], hostvars: Mapping[str, Mapping[str, Any]]) -> str:
    """The broker host a URL points at ("" when none of the inventory's)."""
    try:
        address = urlsplit(url).hostname or "localhost"
    except ValueError:
        return ""
    for broker in brokers:
        hv = hostvars[broker]
        names = (broker, str(hv.get("ansible_host", broker)), str(hv["celery_private_address"]))
        if address in binds(hv) or address in names:
            return broker
    return brokers[0] if len(brokers) == 1 and is_loopback(address) else ""


def celery_tls_errors(
    groups: Mapping[str, Iterable[str]], hostvars: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Ansible entry point: every TLS rule of an inventory (`groups` is Ansible's groups,
    `hostvars` each host's settings)."""
    errors: list[Refusal] = []
    brokers = list(groups.get("broker", []))
    for broker in brokers:
        hv = hostvars[broker]
        if truthy(hv["redis_tls_enabled"]):
            errors += _file_errors(broker, hv, REDIS_TLS_FILES, "redis_tls_enabled is true")
    # issue 22: a replicated broker speaks no TLS yet (its nodes' rule) and its clients' URLs
    # are celery_sentinel.py's to judge: a redis:// URL there is refused once, for naming a node.
    replicated = len(brokers) > 1
    for worker in groups.get("celery_workers", []):
        hv = hostvars[worker]
        for name in ("celery_app_broker_url", "celery_app_result_backend"):
            url = str(hv.get(name) or "")
            if not url or replicated:
                continue
            broker = _broker_of(url, brokers, hostvars)
            tls = truthy(hostvars[broker]["redis_tls_enabled"]) if broker else None
            errors += url_errors(name, worker, url, hv, tls)
        if hv.get("celery_app_broker_ca_file"):
            errors += _file_errors(worker, hv, ["celery_app_broker_ca_file"], "it is set")
    for host in groups.get("flower", []):
        hv = hostvars[host]
        address = str(hv["flower_address"])
        cert, key = (hv.get(n) for n in FLOWER_TLS_FILES)
        if not is_loopback(address) and not (cert or key):
            errors.append(
                (
                    "flower_address",
                    host,
                    f" is {address}, beyond loopback, but Flower has no TLS: its password and "
                    "every task's arguments would cross the network in clear. Set "
                    "flower_tls_cert_file and flower_tls_key_file (PEM files on the controller), "
                    "or keep flower_address: 127.0.0.1 and reach Flower through an SSH tunnel.",
                )
            )
        elif cert or key:
            errors += _file_errors(host, hv, FLOWER_TLS_FILES, "Flower's TLS needs both")
    return once(errors)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {f.__name__: f for f in (celery_tls_errors, celery_broker_ca_path)}
