"""A host's settings as playbooks/validate.yml hands them to the rules: the roles' defaults
(roles/*/defaults/main.yml, their simple templates rendered) under the inventory's values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
import yaml

from celery_sentinel_client import celery_announce_default

ROOT = Path(__file__).resolve().parent.parent


def role_defaults() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in sorted(ROOT.glob("roles/*/defaults/main.yml")):
        merged.update(yaml.safe_load(path.read_text()) or {})
    return merged


DEFAULTS = role_defaults()


def regex_replace(value: Any, pattern: str = "", replacement: str = "") -> str:
    """Ansible's filter of that name, as the defaults use it."""
    return re.sub(pattern, replacement, str(value))


ENVIRONMENT = jinja2.Environment(undefined=jinja2.StrictUndefined)
ENVIRONMENT.filters["regex_replace"] = regex_replace
# the collection's filter (issue 22: redis_announce_address)
ENVIRONMENT.filters["celery_toolkit.stack.celery_announce_default"] = celery_announce_default


def settings(**inventory: Any) -> dict[str, Any]:
    """The defaults under `inventory`, each default that is a template rendered against the
    result (celery_app_user: "{{ celery_app_name }}"); those that need more (role_path, the
    inventory's groups: redis_nodes, hence redis_primary) dropped."""
    values = {**DEFAULTS, **inventory}
    for name, value in DEFAULTS.items():
        if name in inventory or not (isinstance(value, str) and "{{" in value):
            continue
        try:
            values[name] = ENVIRONMENT.from_string(value).render(values)
        except jinja2.UndefinedError:
            del values[name]
    return values


def fleet(hostvars: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each host's settings from its inventory values."""
    return {host: settings(**hv) for host, hv in hostvars.items()}
