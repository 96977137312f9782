"""Secrets off command lines and out of hashes, as a reviewer would look for them (issue 18).

A deploy that rotates the Django project's SECRET_KEY (a new value in celery_app_environment,
given as an extra-vars file, never on ansible-playbook's own command line) runs with -vvv while
two samplers read, every 0.2 s, every command line of the controller (`ps -ww -eo args`: all
processes of the machine) and of the host (`/proc/*/cmdline`, through `docker exec`). No sample
and no line of its output may hold the broker's password (plain or URL-encoded), Flower's
password or the key, old or new. The rotation must make the host pending and restart its
processes; the deploy mark and the restart token hold no plain hash of a secret. Then the
scenario's own key is deployed again on a host made to look like one of an earlier toolkit
version (a mark of unkeyed SHA-1 digests, no key): it is pending once, and a re-run with -vvv
has nothing to do, changes nothing and prints no secret.

Runs before the shared app_shape tests (molecule.yml, additional_files_or_dirs) and leaves the
host as converge left it.
"""

import hashlib
import json
import re
import secrets
import shlex
import subprocess
import threading
from urllib.parse import quote

import pytest

from playbook_runner import run_playbook

CONTAINER = "celery-toolkit-app-django"
APP = "shop"
UNITS = [f"{APP}-worker@main", f"{APP}-worker@mail", f"{APP}-beat", f"{APP}-flower"]
MARK = f"/etc/ansible/facts.d/{APP}_deploy.fact"
ENV_FILE = f"/etc/{APP}/{APP}.env"
KEY = f"/etc/{APP}/hash.key"


class Sampler:
    """Runs `command` every `period` seconds in a thread and keeps each output."""

    def __init__(self, command: list[str], period: float = 0.2):
        self.command, self.period = command, period
        self.samples: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            proc = subprocess.run(self.command, capture_output=True, check=False)
            # /proc/<pid>/cmdline separates the arguments with NUL bytes
            self.samples.append(proc.stdout.replace(b"\0", b" ").decode(errors="replace"))
            self._stop.wait(self.period)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def secret_forms(values: dict[str, str]) -> dict[str, str]:
    """Each secret and its URL-encoded form (as it stands in a broker URL)."""
    forms = {}
    for name, value in values.items():
        forms[name] = value
        forms[f"{name} (URL-encoded)"] = quote(value, safe="")
    return forms


def leaks(texts: list[str], forms: dict[str, str]) -> dict[str, str]:
    """Which secrets some text holds: name -> the line (of the first text) that holds it."""
    found = {}
    for text in texts:
        for name, value in forms.items():
            if name not in found and value in text:
                line = next(line for line in text.splitlines() if value in line)
                found[name] = line.replace(value, "<" + name + ">")[:300]
    return found


def main_pids(host) -> dict[str, str]:
    return {
        unit: host.check_output(f"systemctl show -p MainPID --value {unit}.service")
        for unit in UNITS
    }


@pytest.fixture(scope="module")
def inventory(host):
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def rotated(host, inventory, tmp_path_factory):
    """Deploy a new SECRET_KEY with -vvv while sampling every command line. Afterwards, unless
    the last test did, deploy the scenario's own environment again."""
    old_key = inventory["celery_app_environment"]["DJANGO_SECRET_KEY"]
    new_key = f"rotated-secret-key-{secrets.token_hex(12)}"
    extra = tmp_path_factory.mktemp("secrets") / "rotated.json"
    extra.touch(mode=0o600)
    env = {**inventory["celery_app_environment"], "DJANGO_SECRET_KEY": new_key}
    extra.write_text(json.dumps({"celery_app_environment": env}))
    forms = secret_forms(
        {
            "redis_password": inventory["redis_password"],
            **{
                f"Redis user {u['name']}'s password": u["password"]
                for u in inventory["redis_acl_users"]
            },
            "flower_basic_auth_password": inventory["flower_basic_auth_password"],
            "the old SECRET_KEY": old_key,
            "the new SECRET_KEY": new_key,
        }
    )
    before = main_pids(host)
    # -ww: whole command lines, whatever COLUMNS says (under Molecule ps cut them at 80
    # characters, and a secret further on would have gone unseen)
    controller = Sampler(["ps", "-ww", "-eo", "args"])
    on_host = Sampler(
        ["docker", "exec", CONTAINER, "sh", "-c", "cat /proc/[0-9]*/cmdline; echo"],
    )
    with controller, on_host:
        proc, seconds = run_playbook("deploy.yml", "-e", f"@{extra}", "-vvv")
    print(f"the rotating deploy took {seconds} s")
    yield {
        "forms": forms,
        "old_key": old_key,
        "new_key": new_key,
        "proc": proc,
        "before": before,
        "after": main_pids(host),
        "controller": controller.samples,
        "on_host": on_host.samples,
        "address": host.ansible.get_variables()["ansible_host"],
    }
    if new_key in host.file(ENV_FILE).content_string:
        run_playbook("deploy.yml")


def test_the_samplers_saw_the_deploy(rotated):
    """So that the next test can fail: the controller's samples caught Ansible at work on the
    host, and the host's samples caught the modules Ansible ran there."""
    controller, on_host = rotated["controller"], rotated["on_host"]
    assert len(controller) > 20 and len(on_host) > 20, (len(controller), len(on_host))
    # Ansible reaches the host over SSH (Molecule's inventory): its ssh client's command line
    # names the address after some 600 characters of options, so whole lines were sampled
    address = rotated["address"]
    assert any(
        "ansible-playbook" in s and re.search(rf"\bssh .* {re.escape(address)} ", s)
        for s in controller
    ), f"no sample shows Ansible's ssh command to {address}"
    # each module Ansible runs there is `/bin/sh -c '<python> && sleep 0'` (pipelined; Molecule
    # logs in as root, so no sudo runs in between: no BECOME-SUCCESS marker to count)
    assert sum("&& sleep 0" in s for s in on_host) > 3, on_host[-1][-2000:]
    # -vvv shows each command Ansible runs, and the controller's import of the app ran
    out = rotated["proc"].stdout
    assert (
        "EXEC" in out
        and "TASK [celery_toolkit.stack.celery_app : Import the app on the controller" in out
    )


def test_no_secret_on_any_command_line_or_in_vvv_output_during_the_deploy(rotated):
    forms, proc = rotated["forms"], rotated["proc"]
    assert leaks(rotated["controller"], forms) == {}, "on the controller"
    assert leaks(rotated["on_host"], forms) == {}, "on the host"
    assert leaks([proc.stdout, proc.stderr], forms) == {}, "in ansible-playbook -vvv output"


def test_the_rotated_secret_made_the_host_pending_and_restarted_it(host, rotated):
    out = re.sub(r"\s+", " ", rotated["proc"].stdout)
    assert f"{CONTAINER}: inputs changed" in out, rotated["proc"].stdout[-3000:]
    restarted = [u for u in UNITS if rotated["after"][u] != rotated["before"][u]]
    assert restarted == UNITS, (rotated["before"], rotated["after"])
    assert rotated["new_key"] in host.file(ENV_FILE).content_string


def plain_hashes(value: str) -> set[str]:
    data = value.encode()
    return {hashlib.new(name, data).hexdigest() for name in ("md5", "sha1", "sha256", "sha512")}


def test_the_mark_and_the_restart_token_hold_no_plain_hash_of_a_secret(host, rotated):
    """The mark (world-readable) holds HMAC-SHA256 digests keyed with a root-only key of the
    host; the restart token in the units and the local fact is keyed too."""
    mark = json.loads(host.file(MARK).content_string)
    assert sorted(mark) == ["files", "inputs"]
    assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in mark.values()), mark
    env_file = host.file(ENV_FILE).content_string
    hardening = host.file(f"/etc/systemd/system/{APP}-.service.d/hardening.conf").content_string
    values = [*rotated["forms"].values(), env_file]
    text = host.file(MARK).content_string
    for value in values:
        assert not plain_hashes(value) & set(mark.values())
        assert not any(digest[:12] in text for digest in plain_hashes(value))
    # the token the units restart on: the release, then 12 hex digits of a keyed hash (before,
    # of an unkeyed SHA-1 over the environment file and the hardening drop-in)
    token = json.loads(host.file(f"/etc/ansible/facts.d/{APP}.fact").content_string)["release"]
    assert re.fullmatch(r".+-[0-9a-f]{12}", token), token
    assert not token.endswith(hashlib.sha1((env_file + hardening).encode()).hexdigest()[:12])
    assert token in host.file(f"/etc/{APP}/worker-main.env").content_string
    key = host.file(KEY)
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)


def test_a_host_of_an_earlier_toolkit_is_pending_once_then_a_rerun_does_nothing(host, rotated):
    """A mark of unkeyed SHA-1 digests and no key, as an earlier toolkit version left the host:
    the deploy (back to the scenario's own key) runs it once and makes a key; a re-run with -vvv
    has nothing to do, changes nothing and prints no secret."""
    old_key = host.file(KEY).content_string
    old_mark = {"inputs": hashlib.sha1(b"inputs").hexdigest(), "files": "0" * 40}
    host.run_expect([0], f"rm {KEY}")
    host.run_expect([0], "sh -c %s", f"echo {shlex.quote(json.dumps(old_mark))} > {MARK}")
    proc, _ = run_playbook("deploy.yml")
    assert f"{CONTAINER}: inputs changed, files changed" in re.sub(r"\s+", " ", proc.stdout)
    assert rotated["old_key"] in host.file(ENV_FILE).content_string
    assert host.file(KEY).mode == 0o600 and host.file(KEY).content_string != old_key
    pids = main_pids(host)
    proc, _ = run_playbook("deploy.yml", "-vvv")
    assert "1 of 1 hosts have nothing to switch or restart" in proc.stdout
    recap = [line for line in proc.stdout.splitlines() if line.startswith(CONTAINER)]
    assert recap and "changed=0" in recap[-1] and "failed=0" in recap[-1], recap
    assert main_pids(host) == pids
    assert "TASK [celery_toolkit.stack.celery_app : Import the app on the controller" in proc.stdout
    assert leaks([proc.stdout, proc.stderr], rotated["forms"]) == {}
