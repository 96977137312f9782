"""What a user of the broker sees: it runs, demands a password, and keeps data across restarts."""

import shlex

import pytest

# one argument of a redis-cli line read from stdin: the toolkit's own quoting (ping.yml)
from celery_quote import redis_config_quote as quote

PASSWORD = "molecule-broker-password-0123"


def redis_cli(host, *args, password=None, user="admin"):
    """Run one command; with a password, AUTH goes first on stdin (never argv, which /proc
    shows), as `user` (redis_password is the admin user's), and the command's reply counts only
    when AUTH answered OK."""
    line = " ".join(quote(a) for a in args)
    if password is None:
        return host.run("redis-cli -h 127.0.0.1 " + line)
    script = f"AUTH {quote(user)} {quote(password)}\n{line}\n"
    out = host.run("printf %s " + shlex.quote(script) + " | redis-cli -h 127.0.0.1")
    lines = out.stdout.splitlines()
    out.auth = lines[0] if lines else ""
    # the reply to the command alone (redis-cli prints a multi-line reply one line per element)
    out.reply = "\n".join(lines[1:]) if out.auth == "OK" else None
    return out


def test_service_enabled_and_active(host):
    service = host.service("redis-server")
    assert service.is_enabled
    assert service.is_running


def test_unauthenticated_command_is_refused(host):
    out = redis_cli(host, "PING")
    assert "NOAUTH" in out.stdout + out.stderr
    assert "PONG" not in out.stdout


def test_wrong_password_is_refused(host):
    out = redis_cli(host, "PING", password="not-the-password")
    assert "WRONGPASS" in out.auth
    assert out.reply is None


def test_the_default_user_cannot_log_in(host):
    """`default` is off (redis_default_user_enabled: false): not even redis_password opens it."""
    out = redis_cli(host, "PING", password=PASSWORD, user="default")
    assert "WRONGPASS" in out.auth
    assert out.reply is None


def test_authenticated_ping_answers(host):
    out = redis_cli(host, "PING", password=PASSWORD)
    assert out.rc == 0
    assert out.auth == "OK"
    assert out.reply == "PONG"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("maxmemory-policy", "noeviction"),
        ("timeout", "0"),
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("protected-mode", "yes"),
    ],
)
def test_broker_settings_are_live(host, setting, expected):
    out = redis_cli(host, "CONFIG", "GET", setting, password=PASSWORD)
    assert out.reply.split() == [setting, expected]


def test_listens_on_loopback_only(host):
    sockets = [s for s in host.socket.get_listening_sockets() if s.endswith(":6379")]
    assert sockets, "redis listens on no socket with port 6379"
    assert all(s.startswith(("tcp://127.0.0.1:", "tcp://::1:")) for s in sockets), sockets


def test_config_files_are_not_world_readable(host):
    for path in ("/etc/redis/redis.conf", "/etc/redis/auth.conf"):
        f = host.file(path)
        assert f.user == "redis"
        assert f.mode == 0o640, f"{path} has mode {oct(f.mode)}"


def test_key_survives_restart(host):
    written = redis_cli(host, "SET", "toolkit:survivor", "42", password=PASSWORD)
    assert written.reply == "OK"
    host.run_test("systemctl restart redis-server")
    # wait for the restarted server to answer
    for _ in range(30):
        if redis_cli(host, "PING", password=PASSWORD).reply == "PONG":
            break
        host.run("sleep 0.5")
    assert redis_cli(host, "GET", "toolkit:survivor", password=PASSWORD).reply == "42"
