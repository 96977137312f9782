"""The broker URL's rules: celery_app_broker_url must reach a broker host of the inventory where
its Redis listens (address, port, database) and log in as a user that Redis will have; Flower
must not take the port Redis listens on. Never prints a secret.

issue 22: with a replicated broker (several hosts in the group broker) the app's and Flower's
URLs take the host-less Sentinel form instead (sentinel_url_problems, which celery_sentinel.py's
sentinel_errors runs): the toolkit writes one part per broker node at deploy time
(celery_sentinel_client.py), so broker_url_errors leaves them to that rule.

The broker's settings (redis_port, redis_databases, redis_bind_addresses...) are read from each
broker host's settings, the inventory's else the redis role's defaults (validate.yml).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import (
    URL_ENCODE,
    Refusal,
    binds,
    control,
    hosts_phrase,
    is_loopback,
    truthy,
    whole,
)

Settings = Mapping[str, Mapping[str, Any]]
FORM = "redis://:PASSWORD@HOST:PORT/DB (or redis://USER:PASSWORD@HOST:PORT/DB)"
# How a message writes a URL of either form: (scheme, what follows the login's '@').
REDIS_SHAPE = ("redis", "HOST:PORT/DB")
SENTINEL_SHAPE = ("sentinel", "/DB")
# issue 22: the host-less form of a replicated broker's clients (the toolkit adds the hosts).
SENTINEL_FORM = "sentinel://USER:PASSWORD@/DB"
SENTINEL_FORMS = f"{SENTINEL_FORM} (sentinel://:PASSWORD@/DB for Redis's default user)"
# The schemes of a URL that reaches the broker's Redis (the result backend may be another store).
REDIS_SCHEMES = ("redis", "rediss", "sentinel")
# Characters that end or split a broker URL's parts when a password holds them as they are
# (kombu splits the URL on ';' into failover brokers); '%' starts an escape that kombu decodes.
URL_RESERVED = "/?#@; "
# The port a URL without one names (Redis's own, whatever redis_port says).
URL_DEFAULT_PORT = 6379
SENTINEL_DEFAULT_PORT = 26379  # Sentinel's own
ANY_ADDRESS = ("0.0.0.0", "*", "::")


def _passwords(brokers: Iterable[str], settings: Settings) -> set[str]:
    """Every password the inventory gives the brokers' Redis users (default and ACL users)."""
    found = set()
    for broker in brokers:
        hv = settings[broker]
        users = hv["redis_acl_users"]
        for user in [u for u in users or [] if isinstance(u, Mapping)]:
            found |= {str(user.get("password")), str(user.get("previous_password") or "")}
        found |= {str(hv["redis_password"] or ""), str(hv.get("redis_password_previous") or "")}
    return found - {"", "None"}


def url_scheme(url: Any) -> str:
    """The scheme of a URL as its client reads it, lowercase ("" when it has none)."""
    try:
        return urlsplit(str(url or "")).scheme
    except ValueError:
        return ""


def _unencoded_password(url: str, passwords: set[str], shape: tuple[str, str] = REDIS_SHAPE) -> str:
    """Why the broker URL cannot carry its password as written ("" when it can): a control
    character anywhere, or a password not URL-encoded. The password as written is what lies
    between the first ':' after '//' and the last '@' (kombu and urlsplit split there too)."""
    if kind := control(url):
        return (
            f" holds {kind}: no URL and no environment file carries one. Remove it (a password "
            f"goes into the URL percent-encoded: {URL_ENCODE})."
        )
    userinfo, at, _ = url.partition("://")[2].rpartition("@")
    written = userinfo.partition(":")[2] if at else ""
    if (
        any(char in written for char in URL_RESERVED)
        or re.search(r"%(?![0-9A-Fa-f]{2})", written)
        or (written in passwords and unquote(written) != written)
    ):
        return (
            " carries its password without URL-encoding: written as it is, a password ends "
            "the URL's parts at '/', '?', '#', '@', ';' or a space, and its '%' starts an "
            f"escape. Write {_written(shape, ':' + URL_ENCODE)} (or USER:... for an ACL user; "
            "Jinja's urlencode leaves '/' as it is)."
        )
    return ""


def _written(shape: tuple[str, str], login: str) -> str:
    """A URL of `shape` logging in as `login`: redis://LOGIN@HOST:PORT/DB, sentinel://LOGIN@/DB."""
    return f"{shape[0]}://{login}@{shape[1]}"


def _split(url: str, form: str) -> tuple[SplitResult | None, str]:
    """urlsplit's parts, or why the client could not read the URL (a port that is no number)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a port that is no number)
    except ValueError:
        return None, f" is not a URL the broker client can read: write it as {form}."
    return parts, ""


def _parse(url: str, passwords: set[str]) -> tuple[SplitResult | None, str]:
    """The URL's parts, or why the broker client could not read it."""
    if problem := _unencoded_password(url, passwords):
        return None, problem
    parts, problem = _split(url, FORM)
    if parts is None:
        return None, problem
    if parts.scheme not in ("redis", "rediss"):  # rediss: TLS, checked by celery_tls.py
        return None, (
            f" uses the scheme {parts.scheme or '(none)'!r}: the toolkit's broker is the Redis it "
            f"deploys on the broker group, reached as {FORM}."
        )
    return parts, ""


def _target(worker: str, address: str, brokers: list[str], settings: Settings) -> tuple[str, str]:
    """The broker host a URL's address reaches from `worker`, or why none does."""
    if is_loopback(address):
        if worker in brokers:
            return worker, ""
        listening = "; ".join(f"{b}: {', '.join(binds(settings[b]))}" for b in brokers)
        return "", (
            f" points at {address}, the host itself, which runs no Redis (it is not in the "
            f"broker group): use an address a broker host listens on ({listening})."
        )
    for broker in brokers:
        hv = settings[broker]
        names = (broker, str(hv.get("ansible_host", broker)))
        listens_everywhere = any(a in ANY_ADDRESS for a in binds(hv))
        if address in binds(hv) or (address in names and listens_everywhere):
            return broker, ""
    listening = "; ".join(f"{b}: {', '.join(binds(settings[b]))}" for b in brokers)
    return "", (
        f" points at {address}, where no broker host listens (redis_bind_addresses: {listening}): "
        f"put one of those addresses in the URL, or add {address} to the broker's "
        "redis_bind_addresses."
    )


# issue 21 (celery_stranded.py): which Redis a recorded or new broker address reaches
broker_target = _target


def _database(parts: SplitResult) -> str:
    """The database a URL names (Redis's 0 when it names none)."""
    return parts.path.strip("/") or "0"


def _sentinel_endpoint(url: str) -> dict[str, Any]:
    """issue 22: a Sentinel URL, host-less as the inventory writes it or one part per sentinel
    (';') as the toolkit expands it: {host: "sentinel:ADDRESS:PORT,..." (sorted; "sentinel"
    when it names none), port: 0, db}, never its user or password."""
    sentinels, db = [], ""
    for part in url.split(";"):
        try:
            parts = urlsplit(part.strip())
            port = parts.port or SENTINEL_DEFAULT_PORT
        except ValueError:
            return {}
        db = db or parts.path.strip("/")
        if parts.hostname:
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            sentinels.append(f"{host}:{port}")
    db = db or "0"
    host = f"sentinel:{','.join(sorted(sentinels))}" if sentinels else "sentinel"
    return {"host": host, "port": 0, "db": int(db) if db.isdigit() else db}


def celery_broker_endpoint(url: Any) -> dict[str, Any]:
    """Where a broker URL points, {host, port, db}, never its user or password (issue 21: what a
    worker host records it consumed from; issue 22: a Sentinel URL, _sentinel_endpoint). {} for a
    URL that cannot be read (validate.yml names it first)."""
    if url_scheme(url) == "sentinel":
        return _sentinel_endpoint(str(url))
    try:
        parts = urlsplit(str(url or ""))
        port = parts.port or URL_DEFAULT_PORT
    except ValueError:
        return {}
    if not parts.hostname:
        return {}
    db = _database(parts)
    return {"host": parts.hostname, "port": port, "db": int(db) if db.isdigit() else db}


def _endpoint_problems(parts: SplitResult, target: str, hv: Mapping[str, Any]) -> list[str]:
    """The URL's port and database against the Redis of `target`."""
    problems = []
    port, redis_port = parts.port or URL_DEFAULT_PORT, whole(hv["redis_port"])
    if redis_port is not None and port != redis_port:
        problems.append(
            f" uses port {port}, but Redis on {target} listens on redis_port {redis_port}: use "
            f"{redis_port} in the URL."
        )
    if problem := _database_problem(_database(parts), target, hv):
        problems.append(problem)
    return problems


def _database_problem(db: str, target: str, hv: Mapping[str, Any]) -> str:
    """Whether `db` is one of the databases of Redis on `target` ("" when it is)."""
    databases = whole(hv["redis_databases"])
    if databases is not None and (not db.isdigit() or int(db) >= databases):
        return (
            f" names the database {db!r}, but Redis on {target} has databases 0 to "
            f"{databases - 1} (redis_databases): end the URL with /0 (or another of those)."
        )
    return ""


def _login_problem(
    parts: SplitResult, target: str, hv: Mapping[str, Any], shape: tuple[str, str] = REDIS_SHAPE
) -> str:
    """Whether Redis on `target` will have the user the URL logs in as, with that password
    (`shape`: how the fix writes the URL)."""
    if parts.username and parts.password is None:
        return (
            " has a secret before '@' but no ':' in front of it, so Redis would read it as a "
            f"user name (and print it in errors): write {_written(shape, ':SECRET')}."
        )
    user = unquote(parts.username or "") or "default"
    password = unquote(parts.password or "")
    if user == "default":
        if not truthy(hv["redis_default_user_enabled"]):
            return (
                f" logs in as Redis's default user, which is off on {target} "
                "(redis_default_user_enabled: false; redis_password is the admin user's): log in "
                f"as the app's own user of redis_acl_users, {_written(shape, 'USER:PASSWORD')} "
                "(the password URL-encoded), or set redis_default_user_enabled: true for the "
                "broker."
            )
        expected = hv["redis_password"]
        # during a rotation the URL may still hold the previous password (Redis accepts both)
        accepted = {str(expected), str(hv.get("redis_password_previous") or expected)}
        if expected and password not in accepted:
            return (
                " authenticates as Redis's default user with a password that is not "
                f"redis_password of {target}: write the URL as "
                f"{_written(shape, ':' + URL_ENCODE)}, or as a user of redis_acl_users."
            )
        return ""
    users = {str(u.get("name")): u for u in hv["redis_acl_users"] or [] if isinstance(u, Mapping)}
    if user not in users:
        return (
            f" authenticates as the Redis user {user!r}, which is not in redis_acl_users of "
            f"{target} (users: {', '.join(sorted(users)) or 'none'}): add it there, or use "
            f"{shape[0]}://:PASSWORD@... with redis_password for the default user."
        )
    accepted = {
        str(users[user].get(k) or users[user].get("password", ""))
        for k in ("password", "previous_password")
    }
    if password not in accepted:
        return (
            f" authenticates as the Redis user {user!r} with a password that is not the one "
            f"redis_acl_users gives {user!r} on {target} (nor its previous_password): use that "
            "password (URL-encoded) in the URL."
        )
    return ""


def broker_url_errors(
    workers: Iterable[str],
    brokers: Iterable[str],
    settings: Settings,
    var: str = "celery_app_broker_url",
) -> list[Refusal]:
    """The broker URL `var` of each host of `workers` (celery_app_broker_url of the worker
    hosts, flower_broker_url of the Flower hosts): readable, towards a broker host where Redis
    listens, on its port and one of its databases, as a user with its password. issue 22: a
    replicated broker's URLs (every one) and a sentinel:// URL (whatever the broker) are
    celery_sentinel.py's sentinel_errors' to judge, each problem said once."""
    found: list[Refusal] = []
    brokers = list(brokers)
    if len(brokers) > 1:
        return found
    passwords = _passwords(brokers, settings)
    for worker in workers:
        url = settings[worker][var]
        if not url or url_scheme(url) == "sentinel":
            continue  # secret_errors names an empty celery_app_broker_url; sentinel_errors these
        parts, problem = _parse(str(url), passwords)
        target = ""
        if parts and brokers:  # no broker in the inventory: one it does not manage
            target, problem = _target(worker, parts.hostname or "localhost", brokers, settings)
        problems = [problem] if problem else []
        if target:
            problems += _endpoint_problems(parts, target, settings[target])
            if login := _login_problem(parts, target, settings[target]):
                problems.append(login)
        found += [(var, worker, p) for p in problems]
    return found


# --- issue 22: the URLs of the app and Flower towards a replicated broker ------------------------

HOST_LEFT_OUT = (
    ": leave the host out and write one part, {form}: the toolkit writes one part per broker "
    "node itself (its redis_announce_address and redis_sentinel_port), so the app follows the "
    "primary through every failover."
)


def sentinel_url_problems(url: str, brokers: list[str], settings: Settings) -> list[str]:
    """A URL of the app or Flower (broker, result backend) with a replicated broker (`brokers`:
    the group broker, several hosts): the host-less Sentinel form sentinel://LOGIN@/DB, whose
    login Redis will have and whose DB is one of its databases. Every node has the same users,
    passwords and databases (celery_sentinel.py's rule 5), so the first node's are read."""
    nodes, hv = hosts_phrase(brokers), settings[brokers[0]]
    scheme = url_scheme(url)
    if scheme in ("redis", "rediss"):
        return [
            f" names one node of the replicated broker ({len(brokers)} hosts in broker), a "
            "read-only replica after a failover: write it as "
            f"{SENTINEL_FORMS}, without a host (the password URL-encoded): the toolkit names "
            "every sentinel of the broker group."
        ]
    if ";" in url and all(url_scheme(part) == "sentinel" for part in url.split(";")[1:]):
        return [" holds several parts (';')" + HOST_LEFT_OUT.format(form=SENTINEL_FORM)]
    if problem := _unencoded_password(url, _passwords(brokers, settings), SENTINEL_SHAPE):
        return [problem]
    parts, problem = _split(url, SENTINEL_FORMS)
    if parts is None:
        return [problem]
    if parts.scheme != "sentinel":
        return [
            f" uses the scheme {parts.scheme or '(none)'!r}: the toolkit's broker is the "
            "replicated Redis it deploys on the broker group, reached through its sentinels as "
            f"{SENTINEL_FORMS}."
        ]
    problems = []
    if not url.startswith("sentinel://"):
        problems.append(
            f" writes its scheme as {url.partition(':')[0]!r}: write sentinel:// in lowercase, "
            "the form the toolkit expands into one part per broker node."
        )
    if parts.hostname or parts.port:
        problems.append(" names a sentinel's address" + HOST_LEFT_OUT.format(form=SENTINEL_FORM))
    if db := parts.path.strip("/"):
        problems.append(_database_problem(db, nodes, hv))
    else:
        problems.append(
            " names no database: end it with /0 (or another database of redis_databases), as "
            "in sentinel://USER:PASSWORD@/0."
        )
    problems.append(_login_problem(parts, nodes, hv, SENTINEL_SHAPE))
    return [problem for problem in problems if problem]


def single_broker_sentinel_problem(brokers: list[str]) -> str:
    """A sentinel:// URL without a replicated broker (one host in the group broker, or none)."""
    return (
        " uses sentinel://, which is for a replicated broker (three or more hosts in the group "
        f"broker, which holds {len(brokers)}): with one broker host write "
        "redis://USER:PASSWORD@HOST:PORT/DB (redis://:PASSWORD@HOST:PORT/DB for Redis's default "
        "user)."
    )


def flower_port_errors(
    flowers: Iterable[str], brokers: Iterable[str], settings: Settings
) -> list[Refusal]:
    """Flower and Redis on one host cannot listen on the same port."""
    found: list[Refusal] = []
    brokers = list(brokers)
    for host in flowers:
        hv = settings[host]
        port = whole(hv["flower_port"])
        if host in brokers and port is not None and port == whole(hv["redis_port"]):
            found.append(
                (
                    "flower_port",
                    host,
                    f" is {hv['flower_port']}, the port Redis listens on there (redis_port): "
                    "Flower could not start. Give Flower another port (5555 is its own).",
                )
            )
    return found


class FilterModule:
    """celery_inventory_errors (celery_inventory.py) runs these rules; celery_broker_endpoint is
    the one filter of its own."""

    def filters(self) -> dict[str, Any]:
        return {"celery_broker_endpoint": celery_broker_endpoint}
