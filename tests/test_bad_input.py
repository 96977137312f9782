"""Bad input never reaches a host: each broken inventory fails deploy.yml's validation with a
message naming the variable (or queue, group, host) and the fix, before any play that touches
a host starts.

Each case is a small inventory written to a temporary folder. Its hosts are containers that
do not exist, so a task that reached a host would end "unreachable": the recap must show none,
and no play after the validation may start.
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
    "celery_app_broker_url": "redis://:a-real-broker-secret-0123456789@127.0.0.1:6379/0",
    "flower_basic_auth_user": "ops",
    "flower_basic_auth_password": "a-real-flower-secret-42",
    # the controller's import of the app builds into this checkout's cache, as the scenarios do
    "celery_app_wheelhouse_cache": str(ROOT / ".cache/wheelhouse"),
}


def broker_password(password: str) -> dict:
    """redis_password and the broker URL carrying it, percent-encoded as it must be."""
    return {
        "redis_password": password,
        "celery_app_broker_url": f"redis://:{quote(password, safe='')}@127.0.0.1:6379/0",
    }


def groups(**changes_by_name):
    """The default split layout with some fields of some groups changed."""
    layout = copy.deepcopy(SPLIT)
    for group in layout:
        group.update(changes_by_name.get(group["name"], {}))
    return layout


# (id, group_vars/all overrides, host_vars for vm2 or None, expected message)
CASES = [
    (
        "routed-queue-without-consumer",
        {"celery_workers_groups": SPLIT[:1]},
        None,
        "queue 'low' has no consumer: the app sends 3 task(s) there "
        "(refapp.tasks.heavy.scrape_site",
    ),
    (
        "group-consumes-undeclared-queue",
        {"celery_workers_groups": groups(fast={"queues": ["high", "default", "hihg"]})},
        None,
        "worker group 'fast' on vm1 consumes 'hihg', not declared by the app",
    ),
    (
        "group-without-queues",
        {"celery_workers_groups": SPLIT + [{**SPLIT[0], "name": "idle", "queues": []}]},
        None,
        "worker group 'idle' on vm1 consumes no queue",
    ),
    (
        "beat-on-two-hosts",
        {},
        {"celery_workers_beat_enabled": True},
        "beat is enabled on 2 hosts (vm1, vm2)",
    ),
    (
        "beat-on-no-host",
        {"celery_workers_beat_enabled": False},
        None,
        "no host runs beat, so no periodic task is ever sent",
    ),
    (
        "group-name-not-a-systemd-instance",
        {"celery_workers_groups": groups(fast={"name": "Fast Workers"})},
        None,
        "worker group 'Fast Workers' on vm1 (celery_workers_groups): the name must be lowercase",
    ),
    (
        "group-name-twice",
        {"celery_workers_groups": SPLIT + [{**SPLIT[1], "queues": ["low"]}]},
        None,
        "worker group 'slow' appears twice on vm1",
    ),
    (
        "concurrency-zero",
        {"celery_workers_groups": groups(fast={"concurrency": 0})},
        None,
        "worker group 'fast' on vm1 (celery_workers_groups): concurrency must be a whole number "
        "above 0, not 0",
    ),
    (
        "unknown-pool",
        {"celery_workers_groups": groups(slow={"pool": "fork"})},
        None,
        "value of pool must be one of: prefork, threads, solo, gevent, eventlet, got: fork "
        "found in celery_workers_groups",
    ),
    (
        "stop-timeout-below-task-time-limit",
        {"celery_workers_groups": groups(slow={"stop_timeout": 600})},
        None,
        "worker group 'slow' on vm1 has stop_timeout 600 s, shorter than the time limit of "
        "refapp.tasks.heavy.scrape_site (1800 s)",
    ),
    (
        "visibility-timeout-below-longest-task-and-countdown",
        {"celery_app_longest_countdown": 6000},
        None,
        "the broker's visibility_timeout (7200 s) is not longer than the longest task time limit",
    ),
    (
        "app-refuses-its-own-visibility-timeout",
        {"celery_app_environment": {"REFAPP_VISIBILITY_TIMEOUT": "600"}},
        None,
        "the app could not be imported on the controller",
    ),
    (
        "inventory-route-to-undeclared-queue",
        {"celery_app_routes": {"refapp.tasks.heavy.*": "bulk"}},
        None,
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
        None,
        "celery_app_queues (high, default) differs from the queues the app uses "
        "(high, default, low)",
    ),
    (
        "route-pattern-matches-no-task",
        {"celery_app_routes": {**DEFAULT_ROUTES, "refapp.tasks.notifcations.*": "high"}},
        None,
        "celery_app_routes pattern 'refapp.tasks.notifcations.*' matches no task the app registers",
    ),
    (
        "queues-unknown-without-the-app",
        {"celery_app_check_routing": False},
        None,
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
        None,
        "the app's broker client does not load (ModuleNotFoundError: No module named 'redis'): "
        "every worker would crash at start",
    ),
    (
        "app-module-does-not-import",
        {"celery_app_module": "refap"},
        None,
        "the app could not be imported on the controller (celery_app_source, celery_app_module): "
        "importing refap failed: ModuleNotFoundError: No module named 'refap'",
    ),
    (
        "broker-password-empty",
        {"redis_password": ""},
        None,
        "redis_password on vm1 is empty: set it (at least 16 characters)",
    ),
    (
        "broker-password-sample",
        {"redis_password": "CHANGE-ME-at-least-16-characters"},
        None,
        "redis_password on vm1 still holds a sample value",
    ),
    (
        "broker-password-from-sandbox",
        {"redis_password": "sandbox-broker-password-not-secret"},
        None,
        "redis_password on vm1 still holds a sample value",
    ),
    (
        "flower-password-missing",
        {"flower_basic_auth_password": ""},
        None,
        "flower_basic_auth_password on vm1 is empty",
    ),
    (
        "broker-url-missing",
        {"celery_app_broker_url": ""},
        None,
        "celery_app_broker_url on vm1 is empty",
    ),
    (
        "app-name-not-a-user-or-unit",
        {"celery_app_name": "Shop API"},
        None,
        "celery_app_name on vm1 is 'Shop API': it names the app's system user, /opt/<name>, "
        "/etc/<name> and its systemd units",
    ),
    (
        "app-user-root",
        {"celery_app_user": "root"},
        None,
        "celery_app_user on vm1 is 'root', an account the system (or the broker) already has",
    ),
    (
        "base-dir-a-system-folder",
        {"celery_app_base_dir": "/usr/local"},
        None,
        "celery_app_base_dir on vm1 is /usr/local, a folder the system owns",
    ),
    (
        "config-dir-with-a-space",
        {"celery_app_config_dir": "/etc/ref app"},
        None,
        "celery_app_config_dir on vm1 is '/etc/ref app': it must be an absolute path",
    ),
    (
        "broker-url-wrong-password",
        {"celery_app_broker_url": "redis://:another-secret-0123456789@127.0.0.1:6379/0"},
        None,
        "celery_app_broker_url on vm1 authenticates as Redis's default user with a password "
        "that is not redis_password of vm1",
    ),
    (
        "broker-url-logs-in-as-default-which-is-off",
        {"redis_default_user_enabled": False},
        None,
        "celery_app_broker_url on vm1 logs in as Redis's default user, which is off on vm1",
    ),
    (
        "broker-url-password-without-colon",
        {"celery_app_broker_url": "redis://a-real-broker-secret-0123456789@127.0.0.1:6379/0"},
        None,
        "celery_app_broker_url on vm1 has a secret before '@' but no ':' in front of it",
    ),
    (
        "broker-url-unknown-acl-user",
        {"celery_app_broker_url": "redis://shop:a-real-broker-secret-0123456789@127.0.0.1/0"},
        None,
        "celery_app_broker_url on vm1 authenticates as the Redis user 'shop', which is not in "
        "redis_acl_users of vm1",
    ),
    (
        "broker-url-loopback-from-a-host-without-redis",
        {},
        {},
        "celery_app_broker_url on vm2 points at 127.0.0.1, but vm2 runs no Redis",
    ),
    (
        "broker-url-address-redis-does-not-listen-on",
        {"celery_app_broker_url": "redis://:a-real-broker-secret-0123456789@10.1.2.3:6379/0"},
        None,
        "celery_app_broker_url on vm1 points at 10.1.2.3, where no broker host listens",
    ),
    (
        "broker-url-wrong-port",
        {"celery_app_broker_url": "redis://:a-real-broker-secret-0123456789@127.0.0.1:6380/0"},
        None,
        "celery_app_broker_url on vm1 uses port 6380, but Redis on vm1 listens on redis_port 6379",
    ),
    (
        "eviction-policy-drops-tasks",
        {"redis_maxmemory_policy": "allkeys-lru"},
        None,
        "redis_maxmemory_policy must be one of: noeviction, got: allkeys-lru",
    ),
    (
        "rolling-batch-of-zero-hosts",
        {"celery_deploy_batch": 0},
        None,
        "celery_deploy_batch must be a number of hosts (1 or more), a percentage from '1%' to "
        "'100%', or a list of those; got 0",
    ),
    (
        "unknown-process-manager",
        {},
        {"celery_process_manager": "runit"},
        "celery_process_manager is 'runit' on vm2: set it to 'systemd' (units, the default) or "
        "'supervisor' (supervisord programs)",
    ),
    (
        "systemd-only-setting-under-supervisor",
        {"celery_process_manager": "supervisor", "celery_app_memory_deny_write_execute": True},
        None,
        "celery_app_memory_deny_write_execute is true on vm1, where celery_process_manager is "
        "'supervisor': it is a systemd setting",
    ),
    (
        "idle-timeout-breaks-kombu",
        {"redis_timeout": 300},
        None,
        "redis_timeout must be one of: 0, got: 300",
    ),
    (
        "broker-password-with-a-newline",
        broker_password("a-real-broker\nsecret-0123456789"),
        None,
        "redis_password on vm1 holds a newline: Redis's configuration ends a directive at a "
        "newline",
    ),
    (
        "broker-password-redis-config-cannot-hold",
        broker_password("a-real-broker\x00secret-0123456789"),
        None,
        "redis_password on vm1 holds a NUL: Redis's configuration ends a directive at a newline "
        "and the whole file at a NUL",
    ),
    (
        "environment-name-with-a-dash",
        {"celery_app_environment": {"PA-MODE": "on"}},
        None,
        "celery_app_environment on vm1: 'PA-MODE' is not an environment variable name (letters, "
        "digits and '_', not starting with a digit): no environment file can carry it and the "
        "app could not read it. Rename it, e.g. 'PA_MODE'.",
    ),
    (
        "environment-value-with-a-newline",
        {"celery_app_environment": {"SECRET_KEY": "first line\nsecond line"}},
        None,
        "celery_app_environment on vm1: the value of SECRET_KEY holds a newline, which an "
        "environment file (systemd's EnvironmentFile=, the toolkit's reader) cannot carry",
    ),
    (
        "environment-name-the-toolkit-sets",
        {"celery_app_environment": {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/0"}},
        None,
        "celery_app_environment on vm1 sets CELERY_BROKER_URL, which the toolkit sets itself "
        "(from celery_app_broker_url): remove it from celery_app_environment and set "
        "celery_app_broker_url.",
    ),
    (
        "flower-password-with-a-comma",
        {"flower_basic_auth_password": "a-real,flower-secret-42"},
        None,
        "flower_basic_auth_password on vm1 holds ',': Flower reads FLOWER_BASIC_AUTH as a "
        "comma-separated list of user:password pairs",
    ),
    (
        "flower-user-with-a-colon",
        {"flower_basic_auth_user": "ops:admin"},
        None,
        "flower_basic_auth_user on vm1 holds ':', which HTTP Basic auth (RFC 7617) does not "
        "allow in a user",
    ),
    (
        "acl-user-name-with-a-space",
        {"redis_acl_users": [{"name": "shop app", "password": "shop-broker-secret-0123"}]},
        None,
        "redis_acl_users on vm1: the user name 'shop app' is not a plain word",
    ),
    (
        "broker-url-password-not-url-encoded",
        {
            "redis_password": "a-real/broker-secret-0123456789",
            "celery_app_broker_url": "redis://:a-real/broker-secret-0123456789@127.0.0.1:6379/0",
        },
        None,
        "celery_app_broker_url on vm1 carries its password without URL-encoding: written as it "
        "is, a password ends the URL's parts at '/', '?', '#', '@', ';' or a space, and its '%' "
        "starts an escape. Write redis://:{{ vault_redis_password | urlencode | replace('/', "
        "'%2F') }}@HOST:PORT/DB",
    ),
]

# The same refusals on an inventory of three worker hosts sharing group_vars/all (vm1 also the
# broker, Flower on all three): each is said once, naming the three hosts.
THREE_HOST_CASES = [
    (
        "environment-name-with-a-dash-on-three-hosts",
        {"celery_app_environment": {"PA-MODE": "on"}},
        "celery_app_environment on vm1, vm2 and vm3: 'PA-MODE' is not an environment variable name",
    ),
    (
        "environment-value-with-a-newline-on-three-hosts",
        {"celery_app_environment": {"SECRET_KEY": "first line\nsecond line"}},
        "celery_app_environment on vm1, vm2 and vm3: the value of SECRET_KEY holds a newline",
    ),
    (
        "flower-password-with-a-comma-on-three-hosts",
        {"flower_basic_auth_password": "a-real,flower-secret-42"},
        "flower_basic_auth_password on vm1, vm2 and vm3 holds ','",
    ),
    (
        "broker-url-password-not-url-encoded-on-three-hosts",
        {
            "redis_password": "a-real/broker-secret-0123456789",
            "celery_app_broker_url": "redis://:a-real/broker-secret-0123456789@10.0.0.1:6379/0",
        },
        "celery_app_broker_url on vm1, vm2 and vm3 carries its password without URL-encoding",
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
    tmp_path: Path, overrides: dict, vm2_vars: dict | None, three: bool = False
) -> Path:
    """vm1 (broker, worker, Flower), vm2 too when vm2_vars is not None; with `three`, vm1 to vm3
    all workers running Flower, vm1 the broker listening on 10.0.0.1 and running beat."""
    hosts = {
        "vm1": {
            "ansible_connection": "community.docker.docker",
            "ansible_host": "celery-toolkit-bad-input-does-not-exist",
        }
    }
    workers = {"vm1": None}
    host_vars = {"vm2": vm2_vars} if vm2_vars else {}
    if vm2_vars is not None or three:
        hosts["vm2"] = {**hosts["vm1"]}
        workers["vm2"] = None
    if three:
        hosts["vm3"] = {**hosts["vm1"]}
        workers["vm3"] = None
        host_vars = {
            "vm1": {"redis_bind_addresses": ["127.0.0.1", "10.0.0.1"]},
            "vm2": {"celery_workers_beat_enabled": False},
            "vm3": {"celery_workers_beat_enabled": False},
        }
        url = SOUND["celery_app_broker_url"].replace("127.0.0.1", "10.0.0.1")
        overrides = {"celery_app_broker_url": url, **overrides}
    inventory = {
        "all": {
            "hosts": hosts,
            "children": {
                "broker": {"hosts": {"vm1": None}},
                "celery_workers": {"hosts": workers},
                "flower": {"hosts": workers if three else {"vm1": None}},
            },
        }
    }
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "host_vars").mkdir()
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    (tmp_path / "group_vars/all.yml").write_text(yaml.safe_dump({**SOUND, **overrides}))
    for host, variables in host_vars.items():
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
    UNREACHABLE."""
    proc = deploy(write_inventory(tmp_path, {}, None))
    assert len(plays(proc.stdout)) > 1, proc.stdout[-3000:]
    assert "No such container: celery-toolkit-bad-input-does-not-exist" in proc.stdout


def test_secrets_of_every_printable_character_pass_validation_on_three_hosts(tmp_path):
    """The control case of the three-host fixture, with secrets as users have them: a Django
    key (its whole alphabet, a space and both quotes) in the environment, Redis and Flower
    passwords with symbols, the URL carrying the password percent-encoded."""
    key = "abcdefghijklmnopqrstuvwxyz0123456789!@#$%^&*(-_=+) '\"\\`"
    password = "r3dis pass/with?#@;%'\"$(x)`"
    overrides = {
        "celery_app_environment": {"SECRET_KEY": key},
        "redis_password": password,
        "celery_app_broker_url": f"redis://:{quote(password, safe='')}@10.0.0.1:6379/0",
        "flower_basic_auth_password": "flower pass:'\"$#(x)",
    }
    proc = deploy(write_inventory(tmp_path, overrides, None, three=True))
    assert len(plays(proc.stdout)) > 1, proc.stdout[-3000:]
    assert "No such container: celery-toolkit-bad-input-does-not-exist" in proc.stdout


def assert_refused_before_any_host(proc: subprocess.CompletedProcess, message: str) -> str:
    """The refusal holds `message`, no play after the validation started, nothing was reached
    or changed, and it is a few readable lines. Returns the output, whitespace folded."""
    out = re.sub(r"\s+", " ", proc.stdout + proc.stderr)
    assert proc.returncode != 0
    assert re.sub(r"\s+", " ", message) in out, proc.stdout[-4000:]
    assert plays(proc.stdout) == [VALIDATION_PLAY]
    assert "UNREACHABLE" not in proc.stdout
    assert not re.search(r"unreachable=[1-9]", proc.stdout)
    assert not re.search(r"changed=[1-9]", proc.stdout)
    # no crash of the validation itself (a result read without the field it lacks)
    assert "has no attribute" not in out
    # a few readable lines: no argument-spec dump, no traceback, no script source
    assert len(refusal(proc.stdout)) <= 20, "\n".join(refusal(proc.stdout))
    return out


@pytest.mark.parametrize(
    ("overrides", "vm2", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_refused_before_any_host(tmp_path, overrides, vm2, message):
    assert_refused_before_any_host(deploy(write_inventory(tmp_path, overrides, vm2)), message)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [c[1:] for c in THREE_HOST_CASES],
    ids=[c[0] for c in THREE_HOST_CASES],
)
def test_bad_input_on_three_hosts_is_said_once(tmp_path, overrides, message):
    proc = deploy(write_inventory(tmp_path, overrides, None, three=True))
    assert_refused_before_any_host(proc, message)
    # the assertion's message (after "fatal:") names the problem once, for the three hosts
    said = re.sub(r"\s+", " ", proc.stdout.split("fatal:", 1)[1])
    variable = message.split(" on ")[0]
    assert said.count(f"{variable} on ") == 1, said
    assert "failed=1 " in proc.stdout and not re.search(r"failed=[2-9]", proc.stdout)


def test_an_environment_name_is_data_never_a_command_on_the_controller(tmp_path):
    """The app's import on the controller gets celery_app_environment as its environment, which
    Ansible writes into a shell command line: a name holding ';' ran there as a command (and
    'PA-MODE' crashed the validation). The import waits for an environment that passes."""
    ran = tmp_path / "ran"
    name = f"X;touch {ran};Y"
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    proc = deploy(write_inventory(inventory, {"celery_app_environment": {name: "1"}}, None))
    assert_refused_before_any_host(
        proc, f"celery_app_environment on vm1: {name!r} is not an environment variable name"
    )
    assert not ran.exists()
    assert "could not be imported" not in proc.stdout


@pytest.mark.parametrize("tags", ["flower", "celery_workers,redis"])
def test_validation_runs_whatever_tags_are_asked_for(tmp_path, tags):
    """`deploy.yml --tags X` must not skip the checks: bad input is refused all the same."""
    proc = deploy(write_inventory(tmp_path, {"redis_password": ""}, None), "--tags", tags)
    assert proc.returncode != 0
    assert "redis_password on vm1 is empty" in re.sub(r"\s+", " ", proc.stdout)
    assert plays(proc.stdout) == [VALIDATION_PLAY]
    assert not re.search(r"changed=[1-9]", proc.stdout)


def test_the_matrix_is_at_least_fifteen_cases():
    assert len(CASES) >= 15
