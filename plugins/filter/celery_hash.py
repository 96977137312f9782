"""Keyed hashes for the toolkit's records of values that hold secrets.

The deploy mark (playbooks/tasks/converged.yml, deploy_files.yml) and the restart token
(roles/celery_app/tasks/fingerprint.yml) must notice a changed password without holding a hash
anyone could check a guessed password against: they are HMAC-SHA256 digests keyed with a random
per-host key that only root on that host can read (roles/celery_app/tasks/hash_key.yml).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # the unit tests import this file without Ansible's errors
    AnsibleFilterError = ValueError  # type: ignore[assignment,misc]


def celery_keyed_hash(value: Any, key: Any) -> str:
    """HMAC-SHA256 of `value` (a string; anything else as its str()) keyed with `key`, in hex."""
    if not isinstance(key, str) or len(key) < 32:
        raise AnsibleFilterError(
            "celery_keyed_hash needs the host's key (at least 32 characters): "
            "roles/celery_app/tasks/hash_key.yml sets __celery_app_hash_key"
        )
    return hmac.new(key.encode(), str(value).encode(), hashlib.sha256).hexdigest()


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"celery_keyed_hash": celery_keyed_hash}
