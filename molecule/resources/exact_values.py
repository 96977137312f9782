"""Secrets as users really have them reach every process byte for byte, and nothing in them runs.
Shared by the default (systemd) and supervisor scenarios: each scenario's host_vars hold a
Django-style key with shell syntax in it, a broker password and a Flower password with symbols;
each scenario's tests/test_exact_values.py imports these tests.

Every process of the app (each worker group's Celery main process, beat, Flower, and commands run
with `<app>-run`) must see exactly the inventory's bytes (read from /proc/<pid>/environ as root);
no file the values would have created had a shell read them exists, on the host or in a unit's
private /tmp; the workers answer a ping through a broker that took the password. The env-file
reader the toolkit installs (celery_envfile.py) yields what systemd's EnvironmentFile= yields.
"""

import base64
import json
import os
import re
import shlex
from pathlib import Path
from urllib.parse import quote

import yaml

from celery_quote import systemd_env_quote
from playbook_runner import ROOT

SCENARIO = Path(os.environ["MOLECULE_SCENARIO_DIRECTORY"]).name
HOSTVARS = yaml.safe_load(
    (ROOT / f"molecule/{SCENARIO}/host_vars/celery-toolkit-{SCENARIO}.yml").read_text()
)
APP = "refapp"
CONFIG = HOSTVARS.get("celery_app_config_dir", f"/etc/{APP}")
READER = "/usr/local/lib/celery-toolkit/celery_envfile.py"
SECRET = HOSTVARS["celery_app_environment"]["REFAPP_SECRET_KEY"]
PASSWORD = HOSTVARS["redis_password"]
# what the app's processes must see: the inventory's values, the password percent-encoded
EXPECTED = {
    "REFAPP_SECRET_KEY": SECRET,
    "CELERY_BROKER_URL": f"redis://:{quote(PASSWORD, safe='')}@127.0.0.1:6379/0",
}
FLOWER_AUTH = f"admin:{HOSTVARS['flower_basic_auth_password']}"
DJANGO = "abcdefghijklmnopqrstuvwxyz0123456789!@#$%^&*(-_=+)"
SHELLISH = " '\"\\`touch /tmp/pwned-s1` $HOME $(touch /tmp/pwned-s2)"


def test_the_inventory_holds_what_this_test_is_about():
    """The test means something only with such values (a guard against a tidied inventory)."""
    assert DJANGO in SECRET
    for part in (" ", "'", '"', "\\", "$(touch /tmp/pwned-", "`touch /tmp/pwned-", "$HOME"):
        assert part in SECRET, part
    # symbols, and a "/" that Jinja's urlencode leaves as it is (the URL's replace encodes it)
    assert re.search(r"[ \"#$&'%!\\(]", PASSWORD) and "/" in PASSWORD


def supervised(host) -> bool:
    return host.file(f"/etc/supervisor/conf.d/{APP}-beat.conf").exists


def main_pids(host) -> dict[str, str]:
    """Each long-running process of the app -> the pid of its Celery main process."""
    if supervised(host):
        programs = host.check_output("supervisorctl status").split("\n")
        pids = {}
        for name in (line.split()[0] for line in programs if line.startswith(f"{APP}-")):
            wrapper = host.check_output(f"supervisorctl pid {name}")
            # the wrapper (celery_supervise.py) and the Celery process it runs
            pids[f"{name} (wrapper)"] = wrapper
            pids[name] = host.check_output(f"pgrep -P {wrapper}")
        return pids
    units = host.check_output(
        f"systemctl list-units --no-legend --plain --state=running '{APP}-*.service'"
    )
    return {
        unit: host.check_output(f"systemctl show -p MainPID --value {unit}")
        for unit in (line.split()[0] for line in units.splitlines() if line.strip())
    }


def environ(host, pid: str) -> dict[str, str]:
    """/proc/<pid>/environ, read as root, exactly (base64 keeps every byte)."""
    raw = base64.b64decode(host.check_output(f"base64 -w0 /proc/{pid}/environ"))
    pairs = [item.split(b"=", 1) for item in raw.split(b"\0") if item]
    return {k.decode(): v.decode() for k, v in pairs}


def test_every_process_of_the_app_sees_the_exact_bytes(host):
    pids = main_pids(host)
    kinds = {kind for kind in ("worker", "beat", "flower") for name in pids if kind in name}
    assert kinds == {"worker", "beat", "flower"}, pids
    assert sum("worker" in name and "wrapper" not in name for name in pids) == 2, pids
    for name, pid in pids.items():
        env = environ(host, pid)
        seen = {key: env.get(key) for key in EXPECTED}
        assert seen == EXPECTED, name
        # (a wrapper's /proc/<pid>/environ is what it started with: the --env files it read
        # reach its child only)
        if "flower" in name and "wrapper" not in name:
            assert env.get("FLOWER_BASIC_AUTH") == FLOWER_AUTH, name


def test_the_run_helper_passes_the_exact_bytes(host):
    show = (
        f"import os, json; print(json.dumps({{k: os.environ.get(k) for k in {list(EXPECTED)!r}}}))"
    )
    out = host.check_output(f"{APP}-run python -c {shlex.quote(show)}")
    assert json.loads(out) == EXPECTED
    # env(1) prints them as they are, one per line
    lines = host.check_output(f"{APP}-run env").splitlines()
    for key, value in EXPECTED.items():
        assert f"{key}={value}" in lines, key
    # the repr, as the user would look at it
    show = "import os; print(repr(os.environ['REFAPP_SECRET_KEY']))"
    out = host.check_output(f"{APP}-run python -c {shlex.quote(show)}")
    assert out == repr(SECRET)


def test_nothing_in_the_values_ran(host):
    """Not on the host, not in any unit's private /tmp (/tmp/systemd-private-*/tmp)."""
    found = host.check_output(
        "find / -xdev -name 'pwned-*' 2>/dev/null; find /tmp /var/tmp "
        "-name 'pwned-*' 2>/dev/null; true"
    )
    assert found == ""


def test_the_broker_took_the_password_and_the_workers_answer(host):
    out = host.check_output(f"{APP}-run celery -A {APP} inspect ping --timeout 10")
    assert len(re.findall(r"\bpong\b", out)) == 2, out
    # Redis holds the inventory's password byte for byte (AUTH sent as RESP, from stdin)
    assert redis_auth(host, PASSWORD) == "+OK"
    assert redis_auth(host, PASSWORD[:-1]).startswith("-WRONGPASS")


AUTH = """
import socket, sys
p = sys.stdin.buffer.read()
s = socket.create_connection(("127.0.0.1", 6379))
s.sendall(b"*2\\r\\n$4\\r\\nAUTH\\r\\n$%d\\r\\n%s\\r\\n" % (len(p), p))
print(s.recv(200).decode().strip())
"""


def redis_auth(host, password: str) -> str:
    data = base64.b64encode(password.encode()).decode()
    return host.check_output(f"echo {data} | base64 -d | python3 -c {shlex.quote(AUTH)}")


# systemd's grammar beyond what the toolkit writes, line by line (each a different name)
GRAMMAR = [
    "# a comment",
    "; another",
    "",
    "A1=plain",
    "  A2  =   spaced out   ",
    "A3='single $HOME \\ \"x\"'",
    'A4="keep \\n and \\q"',
    "A5=un\\ quoted\\$x\\\\ ",
    "A6=\"a\"'b'c",
    'A7="two\\',
    'lines"',
    "A8=x\\",
    "y",
    "A9='multi",
    "line'",
    "A10=1 # not a comment",
    "export A11=1",
    "A12 B=2",
    "A13=1",
    "A13=2",
    "A14=",
    "A15",
    "A16=é 日本 🎉",
]


def test_the_installed_reader_reads_as_systemd_does(host):
    """celery_envfile.py (what <app>-run and the supervisor wrapper use) against systemd 's own
    EnvironmentFile= on this host: the toolkit's quoting of a secret and of every printable
    ASCII character, and hand-written syntax."""
    printable = "".join(chr(c) for c in range(0x20, 0x7F))
    lines = [
        f"S1={systemd_env_quote(SECRET)}",
        f"S2={systemd_env_quote(printable)}",
        f"S3={systemd_env_quote(DJANGO + SHELLISH)}",
        *GRAMMAR,
    ]
    text = "\n".join(lines) + "\n"
    path = "/root/exact-values-test.env"
    host.check_output(f"echo {base64.b64encode(text.encode()).decode()} | base64 -d > {path}")
    ours = json.loads(host.check_output(f"python3 {READER} {path}"))
    dump = "import os, json; print(json.dumps(dict(os.environ)))"
    theirs = json.loads(
        host.check_output(
            f"systemd-run --quiet --wait --pipe -p EnvironmentFile={path} "
            f"/usr/bin/python3 -c {shlex.quote(dump)}"
        )
    )
    names = {line.split("=")[0].strip() for line in lines if "=" in line}
    assert {k: v for k, v in theirs.items() if k in names} == ours
    assert ours["S1"] == SECRET and ours["S2"] == printable
    assert ours["S3"] == DJANGO + SHELLISH
    assert len(ours) == 16, ours  # "export A11" and "A12 B" are no names; A15 has no "="
    assert host.check_output("ls /tmp | grep pwned- || true") == ""
