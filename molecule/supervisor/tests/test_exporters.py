"""issue 20: under supervisord, Debian's node exporter reports the app's programs (its supervisord
collector over supervisord's socket, opened to the exporter's group by the seam), not systemd's
units; the Redis exporter of the same host logs in as its own Redis user. Runs on the converged
host before test_supervisor.py's switches (file order)."""

import re

import pytest

PROGRAMS = ["refapp-worker-fast", "refapp-worker-slow", "refapp-beat", "refapp-flower"]


def metrics(host, port):
    out = host.run(
        "python3 -c 'import sys, urllib.request; "
        f'sys.stdout.write(urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode())\''
    )
    assert out.rc == 0, out.stderr
    return out.stdout


def value(text, name, **labels):
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'([a-zA-Z_]+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return None


@pytest.mark.parametrize("program", PROGRAMS)
def test_the_node_exporter_reports_each_program_of_the_app(host, program):
    text = metrics(host, 9100)
    assert value(text, "node_scrape_collector_success", collector="supervisord") == 1
    assert value(text, "node_supervisord_up", name=program) == 1
    assert value(text, "node_supervisord_state", name=program) == 20  # RUNNING


def test_a_stopped_program_reads_down(host):
    host.run_test("supervisorctl stop refapp-beat")
    try:
        assert value(metrics(host, 9100), "node_supervisord_up", name="refapp-beat") == 0
    finally:
        host.run_test("supervisorctl start refapp-beat")
    assert value(metrics(host, 9100), "node_supervisord_up", name="refapp-beat") == 1


def test_no_systemd_collector_under_supervisord(host):
    text = metrics(host, 9100)
    assert value(text, "node_scrape_collector_success", collector="systemd") is None


def test_supervisords_socket_is_open_to_the_exporters_group_only(host):
    sock = host.file("/run/supervisor.sock")
    assert (sock.user, sock.group, sock.mode) == ("root", "prometheus", 0o770)
    access = host.file("/etc/supervisor/conf.d/exporter-access-refapp.conf").content_string
    assert "chown=root:prometheus" in access


def test_the_redis_exporter_logs_in_as_its_own_user(host):
    text = metrics(host, 9121)
    assert value(text, "redis_up") == 1
    # every queue of the app (validate.yml found them in the app) and kombu's unacked hash
    for key in ("high", "default", "low", "unacked"):
        assert value(text, "redis_key_size", db="db0", key=key) is not None, key
