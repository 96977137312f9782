"""The app's side of a replicated broker as its operator sees it: the workers, beat and Flower
reach the broker through the sentinels only; a planned switchover under load (playbooks/
switchover.yml) loses no task and runs none twice; a primary lost with its VM under load stops
none of them: they consume again within 30 s, without a restart, and every acknowledged task
runs (the figures: lost, run twice, the longest stall); during it (the lost VM still down)
rollback.yml and deploy.yml work on the promoted primary and deploy.yml changes no broker node;
after it, deploy.yml completes on every node.

Runs after test_sentinel.py (file order), on the same fleet: two worker VMs (fast and slow
groups on each, beat and Flower on the first) and the three broker VMs.
"""

from failover import (
    WORKERS,
    docker_exec,
    kill_primary_under_load,
    restart_lost_node,
    switchover_under_load,
    units,
)
from test_sentinel import (
    NODES,
    _fleet_back_up,  # noqa: F401  (the fixture: no VM left stopped)
    container_running,
    in_sync,
    primary_of_all,
    run_id,
)

from playbook_runner import play_recap, record_figure, run_playbook

FIGURES = "sentinel-figures.json"
# The consumers that can hold a popped message when the primary dies (a fast and a slow group on
# each worker VM): a pop the replicas had not received yet is delivered again by the new primary.
CONSUMERS = 4


def test_the_apps_processes_name_every_sentinel_and_no_node():
    for node in WORKERS:
        env = docker_exec(node, "cat", "/etc/refapp/refapp.env")
        url = next(line for line in env.splitlines() if line.startswith("CELERY_BROKER_URL="))
        parts = url.partition("=")[2].strip('"').split(";")
        assert [p.split("@")[1] for p in parts] == [f"{a}:26379/0" for a in NODES.values()], url
        assert ":6379" not in env
        options = next(
            line for line in env.splitlines() if line.startswith("CELERY_TOOLKIT_BROKER_")
        )
        assert '\\"master_name\\": \\"celery\\"' in options, options
    # every process of the app found the primary through them: they run (the deploy checked that
    # each group answers a ping and consumes its queues)
    for node in WORKERS:
        assert all("ActiveState=active" in s for s in units(node).values()), units(node)


def test_a_planned_switchover_under_load_loses_nothing_and_runs_nothing_twice():
    """playbooks/switchover.yml: the workers pause and finish what they hold, the primary hands
    its role over, the workers consume again; producers and beat go on publishing."""
    figures, kept = switchover_under_load()
    record_figure(FIGURES, "planned switchover under task load", figures)
    print(f"planned switchover under load: {figures}")
    assert kept, "a worker, beat or Flower was restarted"
    assert (figures["lost"], figures["ran_twice"]) == (0, 0), figures
    # (publishes refused while the primary changes are told to the producer at once, not lost:
    # counted, not asserted; docs/benchmarks.md)
    # the queues wait from the pause to the resume: three plays of Ansible, not a timeout
    assert figures["longest_stall_s"] < 60, figures


def test_losing_the_primary_under_load_stops_nothing_and_loses_only_its_last_writes():
    figures, kept = kill_primary_under_load()
    record_figure(FIGURES, "primary killed under task load", figures)
    print(f"primary killed under load: {figures}")
    assert kept, "a worker, beat or Flower was restarted"
    # Consuming again within 30 s of the loss: every task acknowledged after it ran (Load.finish
    # waited for them); tests/bench/sentinel.py measured 6.8 to 9.3 s (docs/benchmarks.md).
    assert figures["longest_stall_s"] < 30, figures
    # A publish returns once a replica has it (celery_launch's WAIT, at most 500 ms): lost, if
    # anything, is a write the primary acknowledged in its last moment after that wait ran out.
    # Nothing acknowledged a second before the loss, or after it, is lost (the VM died while
    # `docker kill` ran: kill_s after it started). Measured: 0 lost in 10 of 10 kills.
    assert all(-figures["kill_s"] <= s < 1.0 for s in figures["lost_acknowledged_s_before"]), (
        figures
    )
    # a pop the replicas had not seen is delivered again by the new primary: one per consumer
    assert figures["ran_twice"] <= CONSUMERS, figures


def test_during_the_failover_rollback_and_deploy_reach_the_new_primary_and_leave_the_broker():
    """At 3 a.m., the old primary's VM still lost: rollback.yml gives each worker VM its single
    worker (every queue), deploy.yml the split groups back; each passes on the workers only once
    they answer a ping and consume exactly their queues, through the sentinels that remain.
    deploy.yml changes no broker node while one cannot be reached (it changes them one by one,
    the primary last): it names the lost VM and exits non-zero."""
    lost = [node for node in NODES if not container_running(node)]
    assert len(lost) == 1, f"the primary's VM is not the one stopped: {lost}"
    live = [node for node in NODES if node not in lost]
    _, seconds = run_playbook("rollback.yml")
    record_figure(FIGURES, "rollback.yml with the lost VM down_s", seconds)
    for node in WORKERS:
        assert active(node) == {"fast": "inactive", "slow": "inactive", "all": "active"}, node
    primary, before = primary_of_all(live), {node: run_id(node) for node in live}
    proc, seconds = run_playbook("deploy.yml", check=False)
    record_figure(FIGURES, "deploy.yml with the lost VM down_s", seconds)
    recap = play_recap(proc.stdout)
    assert proc.returncode != 0
    assert recap[lost[0]]["unreachable"] == 1, proc.stdout[-3000:]
    assert all(recap[node]["changed"] == 0 for node in live), recap
    assert ({node: run_id(node) for node in live}, primary_of_all(live)) == (before, primary)
    for node in WORKERS:
        assert recap[node]["failed"] == recap[node]["unreachable"] == 0, recap
        assert active(node) == {"fast": "active", "slow": "active", "all": "inactive"}, node


def test_the_app_runs_a_task_through_every_queue_after_the_failover():
    record_figure(FIGURES, "killed VM back as a replica after_s", restart_lost_node())
    proc, seconds = run_playbook("verify.yml")
    record_figure(FIGURES, "verify.yml after the failover_s", seconds)
    for queue in ("high", "default", "low"):
        assert f"probe {queue}" in " ".join(proc.stdout.split()), proc.stdout[-3000:]


def active(node: str) -> dict[str, str]:
    return {
        group: docker_exec(
            node, "systemctl", "is-active", f"refapp-worker@{group}", check=False
        ).strip()
        for group in ("fast", "slow", "all")
    }


def test_deploy_after_the_failover_completes_on_every_node():
    """The lost VM is back as a replica: deploy.yml passes on every host (the broker's nodes
    included) and leaves one primary with both replicas in sync, and the split groups. In the
    scenario's order this deploy is the first to reach the broker since test_sentinel.py's
    rolling change (-e redis_tcp_keepalive=301): it rolls that back on every node, so it may
    move the primary, and then only by its own switchover, never by a failover."""
    primary = primary_of_all(NODES)
    proc, seconds = run_playbook("deploy.yml")
    record_figure(FIGURES, "deploy.yml after the failover_s", seconds)
    assert set(play_recap(proc.stdout)) >= set(NODES) | set(WORKERS)
    now = primary_of_all(NODES)
    assert now and in_sync(now, [node for node in NODES if node != now])
    if now != primary:
        assert "Switch the primary over to a replica in sync" in proc.stdout, proc.stdout[-3000:]
    for node in WORKERS:
        assert active(node) == {"fast": "active", "slow": "active", "all": "inactive"}, node
