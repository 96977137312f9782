"""Values from the inventory reach a process byte for byte: plugins/filter/celery_quote.py writes
them (systemd_env_quote, redis_config_quote), roles/celery_app/files/celery_envfile.py reads an
env file as systemd does, and `<app>-run` (templates/usr/local/sbin/app-run.j2) passes what it
read to the command without a shell. (systemd itself reading the written files is tested in the
default and supervisor scenarios: molecule/resources/exact_values.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

from celery_quote import FilterModule, redis_acl_user, redis_config_quote, systemd_env_quote

ROOT = Path(__file__).resolve().parent.parent
FILES = ROOT / "roles/celery_app/files"
sys.path.insert(0, str(FILES))

import celery_envfile  # noqa: E402

DJANGO = "abcdefghijklmnopqrstuvwxyz0123456789!@#$%^&*(-_=+)"
# what a real secret may hold: Django's key alphabet, a space, both quotes, a backslash, and what
# a shell would run or expand
SECRET = DJANGO + " '\"\\`id` $HOME ${HOME} $(touch /tmp/pwned) \\n \\$ #end"
UNICODE = ["é", "Grüße", "日本語", "🎉", "a\u00a0b", "\u200b"]
PRINTABLE = [chr(c) for c in range(0x20, 0x7F)]


def written(**values) -> str:
    """An env file as the toolkit's templates write it."""
    lines = ["# Ansible managed", "# a comment"]
    lines += [f"{name}={systemd_env_quote(value)}" for name, value in values.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("char", PRINTABLE, ids=[f"0x{ord(c):02x}" for c in PRINTABLE])
def test_every_printable_ascii_character_reads_back(char):
    for value in (char, f"a{char}b", char * 3, f" {char} "):
        assert celery_envfile.parse(written(V=value)) == {"V": value}


@pytest.mark.parametrize("value", [SECRET, "".join(PRINTABLE), *UNICODE, "", " lead", "trail "])
def test_secrets_unicode_and_blanks_read_back(value):
    assert celery_envfile.parse(written(A="1", V=value, B="2")) == {"A": "1", "V": value, "B": "2"}


def test_only_backslash_quote_backtick_and_dollar_are_escaped():
    assert systemd_env_quote(DJANGO) == '"abcdefghijklmnopqrstuvwxyz0123456789!@#\\$%^&*(-_=+)"'
    assert systemd_env_quote('\\"`$') == '"\\\\\\"\\`\\$"'
    assert systemd_env_quote("it's # (not) a comment") == '"it\'s # (not) a comment"'


@pytest.mark.parametrize(("value", "text"), [(3, '"3"'), (True, '"True"'), (2.5, '"2.5"')])
def test_numbers_and_booleans_become_their_string(value, text):
    assert systemd_env_quote(value) == text


@pytest.mark.parametrize("quote", [systemd_env_quote, redis_config_quote])
@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\0", "\x1b", "\x7f", "\x85"])
def test_a_control_character_is_refused_without_showing_the_value(quote, char):
    with pytest.raises(Exception, match=r"control character U\+00[0-9A-F]{2} at position 7") as e:
        quote(f"secret{char}x")
    assert "secret" not in str(e.value)


def test_the_filters_are_registered():
    assert set(FilterModule().filters()) == {
        "systemd_env_quote",
        "redis_config_quote",
        "redis_acl_user",
    }


# systemd's grammar beyond what the toolkit writes: what a hand-written file may hold
@pytest.mark.parametrize(
    ("text", "env"),
    [
        ("A=plain\n", {"A": "plain"}),
        ("  A  =   spaced out   \n", {"A": "spaced out"}),
        ("A='single $HOME \\ \"x\"'\n", {"A": 'single $HOME \\ "x"'}),
        ('A="keep \\n and \\q"\n', {"A": "keep \\n and \\q"}),
        ("A=un\\ quoted\\$x\\\\ \n", {"A": "un quoted$x\\"}),
        ("A=\"a\"'b'c\n", {"A": "abc"}),
        ('A="two\\\nlines"\nB=x\\\ny\n', {"A": "twolines", "B": "xy"}),
        ("A='multi\nline'\n", {"A": "multi\nline"}),
        ("# c\n; c\n\n\t\nA=1 # not a comment\n", {"A": "1 # not a comment"}),
        ("export A=1\nB C=2\n1D=3\nE-F=4\nG=5\n", {"G": "5"}),
        ("A=1\nA=2\n", {"A": "2"}),
        ("A=\nB\nC=3", {"A": "", "C": "3"}),
        ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
        ("A=1\0B=2\n", {"A": "1"}),
        ('A="unterminated\n', {"A": "unterminated\n"}),
        ("# a comment that ends in a backslash \\\nA=1\n", {"A": "1"}),
    ],
)
def test_systemd_grammar(text, env):
    assert celery_envfile.parse(text) == env


def test_invalid_names_are_reported_and_invalid_utf8_refuses_the_file(tmp_path):
    warnings = []
    assert celery_envfile.parse("export A=1\n", "f", warnings.append) == {}
    assert warnings == ["f: ignoring 'export A', not an environment variable name"]
    path = tmp_path / "bad.env"
    path.write_bytes(b"A=\xff\n")
    with pytest.raises(celery_envfile.EnvFileError, match="not UTF-8"):
        celery_envfile.read_env_file(str(path))


def test_the_command_line_prints_the_variables_as_json(tmp_path):
    path = tmp_path / "a.env"
    path.write_text(written(V=SECRET))
    out = subprocess.run(
        [sys.executable, str(FILES / "celery_envfile.py"), str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == {"V": SECRET}


REDIS_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"a": b"\a"}


def sdssplitargs(line: str) -> list[str]:
    """A port of Redis's sdssplitargs (src/sds.c), as its config loader applies it to a line."""
    data, args, i = line.encode(), [], 0
    while True:
        while i < len(data) and data[i : i + 1].isspace():
            i += 1
        if i >= len(data):
            return [a.decode() for a in args]
        current, inq, insq = b"", False, False
        while True:
            c = data[i : i + 1]
            if inq:
                if c == b"\\" and data[i + 1 : i + 2] == b"x" and len(data) > i + 3:
                    current += bytes([int(data[i + 2 : i + 4], 16)])
                    i += 3
                elif c == b"\\" and i + 1 < len(data):
                    n = data[i + 1 : i + 2]
                    current += REDIS_ESCAPES.get(n, n)
                    i += 1
                elif c == b'"':
                    assert i + 1 >= len(data) or data[i + 1 : i + 2].isspace(), line
                    i, inq = i + 1, False
                    break
                else:
                    assert c, f"unbalanced quotes: {line}"
                    current += c
            elif insq:
                if c == b"'":
                    i, insq = i + 1, False
                    break
                current += c
            elif c in (b" ", b"\n", b"\r", b"\t", b""):
                break
            elif c == b'"':
                inq = True
            elif c == b"'":
                insq = True
            else:
                current += c
            i += 1
        args.append(current)


@pytest.mark.parametrize(
    "password", ["p@ss w0rd\"#$(x)&'%!", "".join(PRINTABLE), SECRET, *UNICODE, "\\x41 \\"]
)
def test_redis_reads_back_a_quoted_password(password):
    assert sdssplitargs(f"requirepass {redis_config_quote(password)}") == [
        "requirepass",
        password,
    ]
    token = redis_config_quote(">" + password)
    assert sdssplitargs(f"user app reset on {token} ~* &* +@all") == [
        *["user", "app", "reset", "on", ">" + password],
        *["~*", "&*", "+@all"],
    ]


def test_redis_quoting_keeps_printable_ascii_and_escapes_the_rest():
    assert redis_config_quote('a "b" \\ é') == '"a \\"b\\" \\\\ \\xc3\\xa9"'


def render_run_helper(tmp_path: Path) -> Path:
    """app-run.j2 rendered as the celery_app role renders it, its helpers installed beside."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "celery_envfile.py").write_text((FILES / "celery_envfile.py").read_text())
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters.update(
        comment=lambda text: "#\n# " + text + "\n#", to_json=json.dumps, dirname=os.path.dirname
    )
    template = env.from_string(
        (ROOT / "roles/celery_app/templates/usr/local/sbin/app-run.j2").read_text()
    )
    script = tmp_path / "shop-run"
    script.write_text(
        template.render(
            ansible_managed="Ansible managed",
            celery_app_user="shop",
            celery_app_group="shopgroup",
            celery_app_name="shop",
            celery_app_module="shop",
            celery_app_config_dir=str(tmp_path / "etc"),
            celery_app_base_dir=str(tmp_path / "base"),
            # roles/celery/vars/main.yml derives these from the two folders above
            celery_app_env_file=str(tmp_path / "etc" / "shop.env"),
            celery_app_current_dir=str(tmp_path / "base" / "current"),
            __celery_app_supervise_script=str(lib / "celery_supervise.py"),
        )
    )
    # a stand-in for setpriv that prints what it was given
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "setpriv"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(), 'env': dict(os.environ)}))\n"
    )
    fake.chmod(0o755)
    (tmp_path / "etc").mkdir()
    (tmp_path / "base/current/src").mkdir(parents=True)
    return script


def run_helper(tmp_path, script, *args, **env):
    proc = subprocess.run(
        [sys.executable, "-I", str(script), *args],
        capture_output=True,
        text=True,
        env={"PATH": f"{tmp_path}/bin:/usr/bin:/bin", **env},
        cwd=tmp_path,
    )
    return proc, json.loads(proc.stdout) if proc.returncode == 0 else None


def test_the_run_helper_passes_the_values_to_the_command_without_a_shell(tmp_path):
    script = render_run_helper(tmp_path)
    assert script.read_text().startswith("#!/usr/bin/python3 -I\n")
    run = f"$(touch {tmp_path}/pwned) `touch {tmp_path}/pwned2`"
    (tmp_path / "etc/shop.env").write_text(written(SECRET_KEY=SECRET, RUN=run))
    proc, seen = run_helper(tmp_path, script, "python", "-c", "print(1)")
    assert proc.returncode == 0, proc.stderr
    assert seen["argv"] == [
        *["--reuid=shop", "--regid=shopgroup", "--init-groups", "--"],
        *["python", "-c", "print(1)"],
    ]
    assert seen["env"]["SECRET_KEY"] == SECRET
    assert seen["env"]["PATH"] == f"{tmp_path}/base/current/venv/bin:{tmp_path}/bin:/usr/bin:/bin"
    assert seen["cwd"] == f"{tmp_path}/base/current/src"
    assert seen["env"]["RUN"] == run
    assert not list(tmp_path.glob("pwned*"))


def test_the_run_helper_takes_another_file_and_folder_and_runs_the_wrapper(tmp_path):
    script = render_run_helper(tmp_path)
    other = tmp_path / "candidate.env"
    other.write_text(written(X="$(id)"))
    proc, seen = run_helper(
        tmp_path,
        script,
        *["--supervised", "--env", "w.env", "--", "celery", "-A", "${CELERY_APP}"],
        CELERY_TOOLKIT_ENV_FILE=str(other),
        CELERY_TOOLKIT_APP_DIR="/nonexistent",
    )
    assert proc.returncode == 0, proc.stderr
    assert seen["argv"][4:] == [
        *["python", f"{tmp_path}/lib/celery_supervise.py"],
        *["--env", "w.env", "--", "celery", "-A", "${CELERY_APP}"],
    ]
    assert seen["env"]["X"] == "$(id)"
    assert seen["cwd"] == "/"  # as the shell helper did when the folder is missing


def test_the_run_helper_stops_on_a_missing_environment_file(tmp_path):
    script = render_run_helper(tmp_path)
    proc, _ = run_helper(tmp_path, script, "true")
    assert proc.returncode == 1
    assert proc.stderr.startswith("shop-run: cannot read the environment file: ")
    assert "shop.env" in proc.stderr


def test_an_acl_user_holds_its_previous_password_until_it_is_removed():
    """auth.conf's `user` line and acl.yml's ACL SETUSER: reset, on, both passwords quoted (a
    rotation), the profile's rules; `default` off holds no password."""

    profiles = {"celery": "~* -@all +ping", "flower": "~* +get"}
    user = {"name": "shop", "password": 'new "pw"', "previous_password": "old pw"}
    line = redis_acl_user(user, profiles)
    assert line == 'reset on ">new \\"pw\\"" ">old pw" ~* -@all +ping'
    assert sdssplitargs(line)[2:4] == ['>new "pw"', ">old pw"]
    assert redis_acl_user({**user, "previous_password": ""}, profiles) == (
        'reset on ">new \\"pw\\"" ~* -@all +ping'
    )
    assert redis_acl_user({**user, "profile": "flower", "extra_rules": "+mget"}, profiles).endswith(
        '">old pw" ~* +get +mget'
    )
    default = {"name": "default", "enabled": False, "password": "x", "rules": "~* &* +@all"}
    assert redis_acl_user(default, profiles) == "reset off ~* &* +@all"
