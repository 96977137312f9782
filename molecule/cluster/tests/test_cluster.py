"""The fleet as its operator sees it: placement, the broker's defences, losing a VM, rolling.

Tests run in file order on one converged fleet (see molecule.yml).
"""

import json
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from celery_quote import redis_config_quote
from load import SEND
from playbook_runner import (
    LEDGER,
    ROOT,
    play_recap,
    record_figure,
    run_playbook,
    wait_for,
    wait_until_ran,
)

BROKER = "172.30.77.10"
RUN = uuid.uuid4().hex[:8]  # tokens and settings unique to this run: the tests can run again
WORKERS = ["cluster-fast-1", "cluster-fast-2", "cluster-slow-1"]

# As the app, over TLS with its own URL (its ACL user): AUTH must succeed (the PING) before the
# refusals count; Redis is TLS-only, so every command here went over TLS.
DANGEROUS = """
import json
import redis
from refapp import app
client = redis.Redis.from_url(app.conf.broker_url)
answers = {"tls": client.connection_pool.connection_class.__name__, "ping": client.ping()}
for command in (["FLUSHALL"], ["CONFIG", "GET", "maxmemory"], ["CONFIG", "SET", "maxmemory", "1"],
                ["SHUTDOWN", "NOSAVE"]):
    try:
        client.execute_command(*command)
        answers[" ".join(command[:2])] = "allowed"
    except redis.exceptions.NoPermissionError:  # redis-py's class for a NOPERM reply
        answers[" ".join(command[:2])] = "NOPERM"
print(json.dumps(answers))
"""
# A client on a worker host with the system's Python: plain TCP, TLS that verifies the broker
# against a CA (the toolkit's, or the system's own), and over TLS the app's AUTH then PING.
CONNECT = (
    f"BROKER = {BROKER!r}\n"
    + """
import socket, ssl, sys
mode, secret = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
try:
    s = socket.create_connection((BROKER, 6379), timeout=3)
    if mode != "plain":
        cafile = "/etc/refapp/broker-ca.pem" if mode == "ca" else None
        s = ssl.create_default_context(cafile=cafile).wrap_socket(s, server_hostname=BROKER)
    s.sendall(b"AUTH refapp " + secret.encode() + b"\\r\\nPING\\r\\n" if secret else b"PING\\r\\n")
    data = b""
    while data.count(b"\\r\\n") < (2 if secret else 1):
        chunk = s.recv(256)
        if not chunk:
            break
        data += chunk
    print("answer:", " ".join(data.decode(errors="replace").split()))
except ssl.SSLCertVerificationError as exc:
    print("unverified:", exc.verify_message)
except OSError as exc:
    print("refused:", type(exc).__name__)
"""
)
APP_PASSWORD = yaml.safe_load((ROOT / "molecule/cluster/inventory/group_vars/all.yml").read_text())[
    "vault_app_redis_password"
]
FLOWER = """
import ssl, sys, urllib.error, urllib.request
url = sys.argv[1]
context = ssl.create_default_context(cafile="/etc/refapp/broker-ca.pem")
try:
    urllib.request.urlopen(url, timeout=5, context=context)
    print("answer: 200")
except urllib.error.HTTPError as exc:
    print("answer:", exc.code)
except Exception as exc:
    print("refused:", type(exc).__name__)
"""


def docker_exec(container, *argv):
    proc = subprocess.run(["docker", "exec", container, *argv], capture_output=True, text=True)
    return proc.stdout.strip()


def as_app(container, script, *args):
    return docker_exec(container, "refapp-run", "python", "-c", script, *args)


def record(name, value):
    record_figure("cluster-figures.json", name, value)


def current_release(container):
    return Path(docker_exec(container, "readlink", "/opt/refapp/current")).name


def worker_started(host: str) -> str:
    """When the host's worker group last started (systemd's monotonic timestamp)."""
    group = "slow" if "slow" in host else "fast"
    return docker_exec(
        host,
        "systemctl",
        "show",
        "-p",
        "ActiveEnterTimestampMonotonic",
        "--value",
        f"refapp-worker@{group}",
    ).strip()


def test_every_queue_runs_on_a_host_of_the_expected_group():
    proc, _ = run_playbook("verify.yml")
    out = proc.stdout
    for host in ("cluster-fast-1", "cluster-fast-2"):
        assert re.search(rf"worker\s+fast@{host}\s+pong\s+queues\s+default,high\s", out)
    assert re.search(r"worker\s+slow@cluster-slow-1\s+pong\s+queues\s+low\s", out)
    for queue in ("high", "default"):
        assert re.search(rf"probe\s+{queue}\s+ran\s+on\s+fast@cluster-fast-[12]\s", out)
    assert re.search(r"probe\s+low\s+ran\s+on\s+slow@cluster-slow-1\s", out)
    assert re.search(r"beat\s+cluster-slow-1\s", out)  # one beat, on the slow host


def test_trixie_host_runs_its_own_python():
    assert docker_exec("cluster-fast-2", "/opt/refapp/current/venv/bin/python", "-V").startswith(
        "Python 3.13"
    )
    assert docker_exec("cluster-fast-1", "/opt/refapp/current/venv/bin/python", "-V").startswith(
        "Python 3.11"
    )


def test_redis_admits_workers_and_refuses_other_hosts():
    # a worker host reaches the port (TLS only: a plain client gets no answer, not even NOAUTH)
    assert docker_exec("cluster-fast-2", "python3", "-c", CONNECT, "ca", APP_PASSWORD) == (
        "answer: +OK +PONG"
    )
    assert docker_exec("cluster-outsider", "python3", "-c", CONNECT, "plain").startswith("refused:")


def test_redis_speaks_tls_only_and_clients_verify_it():
    plain = docker_exec("cluster-fast-2", "python3", "-c", CONNECT, "plain", APP_PASSWORD)
    assert "PONG" not in plain and "NOAUTH" not in plain, plain
    # without the toolkit's CA (the system's store only), the broker's certificate is not trusted
    untrusted = docker_exec("cluster-fast-2", "python3", "-c", CONNECT, "system")
    assert untrusted.startswith("unverified: ") and "certificate" in untrusted, untrusted
    # with it: TLS, and then the server asks for the password
    assert docker_exec("cluster-fast-2", "python3", "-c", CONNECT, "ca") == (
        "answer: -NOAUTH Authentication required."
    )
    # Redis's own configuration on the broker: no plain port
    config = docker_exec(
        "cluster-broker", "grep", "-E", "^(port|tls-port) ", "/etc/redis/redis.conf"
    )
    assert config.splitlines() == ["port 0", "tls-port 6379"]


def test_redis_cli_reads_the_toolkits_quoting_back_byte_for_byte():
    """The toolkit gives redis-cli its AUTH on stdin, quoted by redis_config_quote (never -a,
    which /proc shows): redis-cli's own parser, over TLS, reads every value back exactly (control
    characters never reach it: the validation refuses them in every password)."""
    values = ['a"b\\c', "sp ace'$(x)`#;&|", "\u00fcn\u00ef \U0001f389", '""', "\\x41", "{{ x }}"]
    admin = yaml.safe_load((ROOT / "molecule/cluster/inventory/group_vars/all.yml").read_text())
    lines = [f"AUTH admin {redis_config_quote(admin['redis_password'])}"]
    lines += [f"ECHO {redis_config_quote(v)}" for v in values]
    proc = subprocess.run(
        ["docker", "exec", "-i", "cluster-broker", "redis-cli", "-h", "127.0.0.1", "--tls"]
        + ["--cacert", "/etc/redis/tls/ca.crt", "--raw"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
    )
    assert proc.stdout.split("\n")[:-1] == ["OK", *values]


def test_the_apps_redis_user_cannot_run_dangerous_commands():
    answers = json.loads(as_app("cluster-fast-1", DANGEROUS))
    assert answers == {
        "tls": "SSLConnection",
        "ping": True,  # AUTH with the app's credentials succeeded
        "FLUSHALL": "NOPERM",
        "CONFIG GET": "NOPERM",
        "CONFIG SET": "NOPERM",
        "SHUTDOWN NOSAVE": "NOPERM",
    }


def test_flower_listens_on_the_private_network_over_https_only():
    url = "https://172.30.77.21:5555/api/workers"
    # from another VM: HTTPS with a certificate the CA signed, and a password still required
    assert docker_exec("cluster-fast-2", "python3", "-c", FLOWER, url) == "answer: 401"
    plain = docker_exec("cluster-fast-2", "python3", "-c", FLOWER, url.replace("https", "http"))
    assert plain != "answer: 401" and plain != "answer: 200", plain


def ledger(prefix):
    return json.loads(as_app("cluster-fast-1", LEDGER, prefix))


def switch_play(out: str) -> str:
    """The part of a deploy's output from its rolling play (switch and restarts) to the next play
    (the exporters' and the monitor's plays follow it) or the recap."""
    rolling = out.split("PLAY [Deploy the Celery app and its worker groups]", 1)[1]
    return re.split(r"^PLAY ", rolling, maxsplit=1, flags=re.M)[0]


def test_a_rerun_with_nothing_to_do_stages_and_restarts_nothing():
    """The scenario's idempotence stage (molecule.yml leaves Molecule's out): converge.yml (the
    test certificates, then deploy.yml) again changes nothing on any host, stages no host and
    restarts no worker."""
    started = {host: worker_started(host) for host in WORKERS}
    proc, seconds = run_playbook("../molecule/cluster/converge.yml")
    assert "3 of 3 hosts have nothing to switch or restart" in proc.stdout
    assert "skipping: no hosts matched" in switch_play(proc.stdout)
    assert "Install the app's user, folders" not in proc.stdout  # no host was staged
    recap = {host: c["changed"] for host, c in play_recap(proc.stdout).items()}
    assert {*WORKERS, "cluster-broker", "cluster-outsider"} <= set(recap), recap
    assert set(recap.values()) == {0}, recap
    assert {host: worker_started(host) for host in WORKERS} == started
    record("re-run with nothing to do (3 worker hosts)", {"seconds": seconds})


def test_a_change_on_one_host_switches_and_restarts_that_host_only(tmp_path):
    """One more process on fast-2: that host switches and restarts, the others are not touched.
    (The way back is the rolling restart of test_a_failed_host_halts_the_rollout_...: its deploy
    gives fast-2 the scenario's groups again; a second deploy here cost ~200 s of CI per run.)"""
    fast = yaml.safe_load(
        (ROOT / "molecule/cluster/inventory/group_vars/fast_hosts.yml").read_text()
    )
    more = tmp_path / "more.yml"
    groups = [{**g, "concurrency": 3} for g in fast["celery_workers_groups"]]
    more.write_text(
        yaml.safe_dump({"all": {"hosts": {"cluster-fast-2": {"celery_workers_groups": groups}}}})
    )
    started = {host: worker_started(host) for host in WORKERS}
    proc, seconds = run_playbook("deploy.yml", inventories=(more,))
    assert "cluster-fast-2: inputs changed" in proc.stdout
    assert "2 of 3 hosts have nothing to switch or restart" in proc.stdout
    switch = switch_play(proc.stdout)
    assert "[cluster-fast-2]" in switch
    assert "[cluster-fast-1]" not in switch and "[cluster-slow-1]" not in switch
    assert worker_started("cluster-fast-2") != started["cluster-fast-2"]
    for host in ("cluster-fast-1", "cluster-slow-1"):
        assert worker_started(host) == started[host], host
    assert "--concurrency=3 " in docker_exec("cluster-fast-2", "cat", "/etc/refapp/worker-fast.env")
    record("deploy that restarts one host of 3", seconds)


def test_stopping_a_whole_fast_host_mid_load_loses_no_task():
    # 200 tasks of 0.5 s on 2 x 2 processes: about 25 s of work, so the host stops mid-load even
    # when publishing is slow (0.1 s tasks were all done before the stop in one CI run of ~10)
    n = 200
    as_app("cluster-fast-1", SEND, f"vmdown-{RUN}", str(n), "0.5")
    # the load has started (by evidence, not a fixed sleep): both fast hosts prefetch at once
    assert wait_for(lambda: len(ledger(f"vmdown-{RUN}")["ledger"]) >= 4, 60)
    before = ledger(f"vmdown-{RUN}")
    started = time.monotonic()
    subprocess.run(["docker", "stop", "-t", "120", "cluster-fast-2"], check=True)
    stop_seconds = round(time.monotonic() - started, 1)
    try:
        # the load goes to high only
        after = wait_until_ran(lambda: ledger(f"vmdown-{RUN}"), n, ["high"])
    finally:
        subprocess.run(["docker", "start", "cluster-fast-2"], check=True)
    record(
        "fast host stopped mid-load",
        {
            "tasks": n,
            "not_yet_run_when_stopped": n - len(before["ledger"]),
            "vm_stop_seconds": stop_seconds,
        },
    )
    missing = sorted({f"vmdown-{RUN}-{i}" for i in range(n)} - set(after["ledger"]))
    twice = sorted(t for t, c in after["ledger"].items() if c != 1)
    assert not missing, f"{len(missing)} tasks never ran: {missing[:10]}"
    assert not twice, f"{len(twice)} tasks ran twice: {twice[:10]}"
    assert n - len(before["ledger"]) > 0, "the load was over before the host stopped"


def wait_until_workers_answer(timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc, _ = run_playbook("verify.yml", check=False)
        if proc.returncode == 0:
            return proc
        time.sleep(5)
    return proc


def test_fast_host_rejoins_after_its_restart():
    proc = wait_until_workers_answer()
    assert proc.returncode == 0, proc.stdout[-3000:]


def assert_rolled_host_by_host(proc: subprocess.CompletedProcess) -> None:
    """Every worker host restarted, one at a time in the inventory's order (batch 1)."""
    started = {host: float(worker_started(host)) for host in WORKERS}
    # the containers share the kernel's monotonic clock
    assert started["cluster-fast-1"] < started["cluster-fast-2"] < started["cluster-slow-1"]
    batches = re.findall(
        r"^PLAY \[Deploy the Celery app and its worker groups\]", proc.stdout, re.M
    )
    assert len(batches) == len(WORKERS)


def pinned_beyond_defaults(*pins: str) -> list[str]:
    """celery_app_extra_requirements plus `pins`: a wheelhouse no host has a release of."""
    defaults = yaml.safe_load((ROOT / "roles/celery_app/defaults/main.yml").read_text())
    return defaults["celery_app_extra_requirements"] + list(pins)


def deploy_with_host_vars(
    tmp_path: Path, pins: list[str], host_vars: dict
) -> subprocess.CompletedProcess:
    """deploy.yml with `pins` as celery_app_extra_requirements and `host_vars` (host -> its
    variables) as an extra inventory source (the scenario's own folders are links into the
    repository); the caller expects it to fail."""
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump({"all": {"hosts": host_vars}}))
    proc, _ = run_playbook(
        "deploy.yml",
        "-e",
        json.dumps({"celery_app_extra_requirements": pins}),
        check=False,
        inventories=(broken,),
    )
    return proc


def test_a_failed_host_halts_the_rollout_and_the_rest_keep_running(tmp_path):
    old = {host: current_release(host) for host in WORKERS}
    pins = pinned_beyond_defaults("six==1.17.0")  # forces a new release
    # fast-2 gets an environment its app refuses at import: its new release fails its check.
    env_ok = {"REFAPP_HEAVY_TASK_SECONDS": "2", "TOOLKIT_TEST_RUN": RUN}
    env = {
        "REFAPP_HEAVY_TASK_SECONDS": "2",
        "TOOLKIT_TEST_RUN": RUN,
        "REFAPP_VISIBILITY_TIMEOUT": "60",
    }
    proc = deploy_with_host_vars(
        tmp_path, pins, {"cluster-fast-2": {"celery_app_environment": env}}
    )
    assert proc.returncode != 0
    assert "could not be installed on cluster-fast-2" in re.sub(r"\s+", " ", proc.stdout)
    # the release is staged on every host at once, before any host switches: a host that
    # cannot install it halts the deploy while every host still runs its old release
    assert {host: current_release(host) for host in WORKERS} == old
    assert not re.search(
        r"^PLAY \[Deploy the Celery app and its worker groups\]", proc.stdout, re.M
    )
    # the refused environment never reached fast-2's live file, which its workers read
    assert "REFAPP_VISIBILITY_TIMEOUT" not in docker_exec(
        "cluster-fast-2", "cat", "/etc/refapp/refapp.env"
    )
    # everything still consumes: the next deploy (fixed input) completes the rollout
    assert wait_until_workers_answer().returncode == 0
    # a new release and a changed environment on every host: the rolling restart, host by host
    # (one deploy checks both: the fleet's deploys are the scenario's cost)
    fixed = {"celery_app_extra_requirements": pins, "celery_app_environment": env_ok}
    proc, seconds = run_playbook("deploy.yml", "-e", json.dumps(fixed))
    assert_rolled_host_by_host(proc)
    # fast-2 is back on the scenario's groups (test_a_change_on_one_host_... gave it one more)
    options = docker_exec("cluster-fast-2", "cat", "/etc/refapp/worker-fast.env")
    assert "--concurrency=2 " in options, options
    record("rolling restart of the fleet (3 worker hosts, batch 1)", {"seconds": seconds})
    releases = {host: current_release(host) for host in WORKERS}
    # every host left its old release; an id is <deploy stamp>-<wheelhouse hash>, so the trixie
    # host (Python 3.13, its own wheelhouse) has another hash, and the two bookworm hosts run the
    # same release (the one the halted deploy staged, or one this deploy made for both)
    assert all(releases[h] != old[h] for h in WORKERS), (old, releases)
    assert releases["cluster-fast-1"] == releases["cluster-slow-1"], releases
    assert releases["cluster-fast-2"].split("-")[1] != releases["cluster-slow-1"].split("-")[1]


def test_a_release_whose_workers_cannot_start_returns_the_host_and_halts(tmp_path):
    """A new release whose fast group cannot start (a pool the release lacks) fails the health
    gate on the first host: it returns to the release that ran and answers again; the hosts
    after it are never reached."""
    old = {host: current_release(host) for host in WORKERS}
    pins = pinned_beyond_defaults("six==1.17.0", "typing_extensions==4.16.0")
    fast = yaml.safe_load(
        (ROOT / "molecule/cluster/inventory/group_vars/fast_hosts.yml").read_text()
    )
    gevent = [{**g, "pool": "gevent"} for g in fast["celery_workers_groups"]]
    started = {host: worker_started(host) for host in WORKERS}
    proc = deploy_with_host_vars(
        tmp_path,
        pins,
        {"cluster-fast-1": {"celery_workers_groups": gevent, "celery_workers_health_timeout": 20}},
    )
    out = re.sub(r"\s+", " ", proc.stdout)
    assert proc.returncode != 0
    assert "worker group 'fast' on cluster-fast-1 does not answer a ping" in out
    assert f"cluster-fast-1 is back on release {old['cluster-fast-1']}" in out
    assert {host: current_release(host) for host in WORKERS} == old
    # the hosts after it were never reached: staged, but neither switched nor restarted
    switch_play = proc.stdout.split("PLAY [Deploy the Celery app and its worker groups]", 1)[1]
    assert "[cluster-fast-2]" not in switch_play and "[cluster-slow-1]" not in switch_play
    for host in ("cluster-fast-2", "cluster-slow-1"):
        assert worker_started(host) == started[host], host
    assert wait_until_workers_answer().returncode == 0


@pytest.fixture(autouse=True, scope="module")
def _no_stopped_containers():
    yield
    subprocess.run(["docker", "start", "cluster-fast-2"], capture_output=True)
