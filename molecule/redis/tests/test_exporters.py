"""issue 20: what an operator's Prometheus reads of the broker: Debian's prometheus-redis-exporter
logs in as a Redis user of its own with the fewest rights, and reports memory against maxmemory,
the AOF's state, each queue's lists (kombu's priority lists too), `unacked` and its oldest entry's
age; Debian's prometheus-node-exporter runs beside it. Both listen on loopback only, hardened like
every service of the app, behind the broker's firewall table."""

import json
import re
import shlex
import time

import pytest

from celery_quote import redis_config_quote as quote

PASSWORD = "molecule-broker-password-0123"
EXPORTER_PASSWORD = 'molecule exporter "pa$$" #0123'
SEP = "\x06\x16"


def admin(host, *args):
    """One command as the admin user (AUTH on stdin, checked)."""
    script = f"AUTH admin {quote(PASSWORD)}\n{' '.join(quote(a) for a in args)}\n"
    out = host.run("printf %s " + shlex.quote(script) + " | redis-cli -h 127.0.0.1")
    lines = out.stdout.splitlines()
    assert lines and lines[0] == "OK", out.stdout + out.stderr
    return "\n".join(lines[1:])


def as_exporter(host, *args):
    script = f"AUTH redis-exporter {quote(EXPORTER_PASSWORD)}\n{' '.join(quote(a) for a in args)}\n"
    out = host.run("printf %s " + shlex.quote(script) + " | redis-cli -h 127.0.0.1")
    lines = out.stdout.splitlines()
    assert lines and lines[0] == "OK", out.stdout + out.stderr
    return "\n".join(lines[1:])


def metrics(host, port):
    out = host.run(
        "python3 -c 'import sys, urllib.request; "
        f'sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode())\''
    )
    assert out.rc == 0, out.stderr
    return out.stdout


def sample(text, name, **labels):
    """The value of one sample (None when absent); label values compared as the exposition
    format escapes them (json-like)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        found = {k: json.loads(f'"{v}"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


@pytest.mark.parametrize("service", ["prometheus-redis-exporter", "prometheus-node-exporter"])
def test_the_exporters_run(host, service):
    assert host.service(service).is_enabled
    assert host.service(service).is_running


@pytest.mark.parametrize("port", [9121, 9100])
def test_the_exporters_listen_on_loopback_only(host, port):
    sockets = [s for s in host.socket.get_listening_sockets() if s.endswith(f":{port}")]
    assert sockets == [f"tcp://127.0.0.1:{port}"], sockets


def test_the_broker_up_with_memory_limit_and_aof(host):
    text = metrics(host, 9121)
    assert sample(text, "redis_up") == 1
    assert sample(text, "redis_memory_max_bytes") == 64 * 1024 * 1024
    assert sample(text, "redis_memory_used_bytes") > 0
    assert sample(text, "redis_aof_enabled") == 1
    assert sample(text, "redis_aof_last_write_status") == 1
    assert sample(text, "redis_aof_last_bgrewrite_status") == 1


def test_queue_lists_priority_lists_and_unacked_are_reported(host):
    """Two messages in `high`, three in its priority-6 list, one unacked entry delivered 30 s ago:
    the exporter reports each list, `unacked` and `unacked_index`, and the oldest entry's age."""
    admin(host, "DEL", "high", f"high{SEP}6", "unacked", "unacked_index")
    admin(host, "LPUSH", "high", "m1", "m2")
    admin(host, "LPUSH", f"high{SEP}6", "p1", "p2", "p3")
    now = int(admin(host, "TIME").splitlines()[0])
    admin(host, "HSET", "unacked", "tag-1", "{}")
    admin(host, "ZADD", "unacked_index", str(now - 30), "tag-1")
    try:
        text = metrics(host, 9121)
        assert sample(text, "redis_key_size", db="db0", key="high") == 2
        assert sample(text, "redis_key_size", db="db0", key=f"high{SEP}6") == 3
        assert sample(text, "redis_key_size", db="db0", key=f"high{SEP}3") == 0
        assert sample(text, "redis_key_size", db="db0", key="low") == 0
        assert sample(text, "redis_key_size", db="db0", key="unacked") == 1
        assert sample(text, "redis_key_size", db="db0", key="unacked_index") == 1
        age = sample(text, "redis_script_values", key="celery_unacked_oldest_age_seconds")
        assert 29 <= age < 90, age
    finally:
        admin(host, "DEL", "high", f"high{SEP}6", "unacked", "unacked_index")
    text = metrics(host, 9121)
    assert sample(text, "redis_script_values", key="celery_unacked_oldest_age_seconds") == 0


@pytest.mark.parametrize(
    "command",
    [
        ["CONFIG", "GET", "requirepass"],
        ["SET", "toolkit:x", "1"],
        ["SLOWLOG", "GET", "1"],
        ["LPOP", "high"],
        ["FLUSHALL"],
        ["KEYS", "*"],
    ],
)
def test_the_exporter_user_reads_only_what_it_reports(host, command):
    assert as_exporter(host, *command).startswith("NOPERM"), command


def test_the_exporter_password_is_in_a_root_only_file_never_on_a_command_line(host):
    env = host.file("/etc/default/prometheus-redis-exporter")
    assert (env.user, env.group, env.mode) == ("root", "root", 0o600)
    pid = host.check_output("systemctl show -p MainPID --value prometheus-redis-exporter")
    cmdline = host.file(f"/proc/{pid}/cmdline").content
    assert b"molecule exporter" not in cmdline
    # and the exporter logged in with exactly these bytes (quotes, $, # and a space included)
    assert sample(metrics(host, 9121), "redis_up") == 1


@pytest.mark.parametrize("service", ["prometheus-redis-exporter", "prometheus-node-exporter"])
def test_the_exporters_are_hardened_like_the_app(host, service):
    props = host.check_output(
        f"systemctl show -p ProtectSystem -p NoNewPrivileges -p PrivateDevices -p User {service}"
    )
    assert "ProtectSystem=strict" in props
    assert "NoNewPrivileges=yes" in props
    assert "User=prometheus" in props
    score = host.run(f"systemd-analyze security --no-pager {service}")
    overall = re.search(r"Overall exposure level for \S+: ([0-9.]+)", score.stdout)
    assert overall and float(overall.group(1)) < 2.5, score.stdout[-300:]


def test_a_broker_only_host_reads_no_app_process(host):
    """No worker group, beat or Flower runs here: the node exporter has no process collector."""
    text = metrics(host, 9100)
    assert sample(text, "node_scrape_collector_success", collector="cpu") == 1
    assert sample(text, "node_scrape_collector_success", collector="systemd") is None
    assert sample(text, "node_scrape_collector_success", collector="supervisord") is None


def test_the_firewall_table_filters_the_exporters_ports(host):
    rules = host.check_output("nft list table inet celery_toolkit_redis")
    for port in (9121, 9100):
        assert re.search(rf"tcp dport {port} ip saddr 192\.0\.2\.9 accept", rules), rules
        assert re.search(rf"tcp dport {port} counter packets \d+ bytes \d+ reject", rules), rules


def test_the_exporter_keeps_reporting_after_a_restart_of_redis(host):
    host.run_test("systemctl restart redis-server")
    for _ in range(30):
        if sample(metrics(host, 9121), "redis_up") == 1:
            break
        time.sleep(0.5)
    assert sample(metrics(host, 9121), "redis_up") == 1
