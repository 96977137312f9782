"""Issue 21: the broker a host records (never a secret), which old queues a new inventory
leaves behind and where their messages go, and what deploy.yml says with the counts
(plugins/filter/celery_broker.py, celery_stranded.py)."""

import pytest

from celery_broker import FilterModule as BrokerFilters
from celery_broker import celery_broker_endpoint
from celery_stranded import (
    FilterModule,
    celery_stranded_answers,
    celery_stranded_brokers,
    celery_stranded_outside,
    celery_stranded_refusal,
    celery_stranded_sources,
)

OLD = {"host": "10.0.0.5", "port": 6379, "db": 0}
NEW_DB = {"host": "10.0.0.5", "port": 6379, "db": 1}
SPLIT = [{"name": "fast", "queues": ["high", "default"]}, {"name": "slow", "queues": ["low"]}]


def host(name, recorded_groups, new_groups, old=OLD, new=OLD):
    recorded = {"groups": recorded_groups, "broker": old} if recorded_groups else {}
    return {"host": name, "recorded": recorded, "broker": new, "groups": new_groups}


def test_the_endpoint_holds_no_secret():
    url = "redis://app:s3cr%2Ft@10.0.0.5:6380/2"
    assert celery_broker_endpoint(url) == {"host": "10.0.0.5", "port": 6380, "db": 2}
    assert "s3cr" not in str(celery_broker_endpoint(url))
    assert celery_broker_endpoint("redis://:pw@broker") == {"host": "broker", "port": 6379, "db": 0}
    assert celery_broker_endpoint("redis://:pw@broker:port/0") == {}
    assert celery_broker_endpoint("") == {}
    assert "celery_broker_endpoint" in BrokerFilters().filters()


def test_nothing_leaves_when_broker_and_queues_stay():
    hosts = [host("vm1", SPLIT[:1], SPLIT[:1]), host("vm2", SPLIT[1:], SPLIT[1:])]
    assert celery_stranded_sources(hosts) == []
    # a queue moving to another host's group is still consumed fleet-wide
    hosts = [host("vm1", SPLIT, [SPLIT[0]]), host("vm2", [], [SPLIT[1]])]
    assert celery_stranded_sources(hosts) == []


def test_a_host_that_ran_nothing_counts_nothing():
    assert celery_stranded_sources([host("vm1", [], SPLIT, new=NEW_DB)]) == []


def test_a_new_database_moves_every_old_queue_to_its_namesake():
    hosts = [
        host("vm1", SPLIT[:1], SPLIT[:1], new=NEW_DB),
        host("vm2", SPLIT[1:], SPLIT[1:], new=NEW_DB),
    ]
    [source] = celery_stranded_sources(hosts)
    assert source["host"] == "vm1"  # the first host that recorded the old broker counts there
    assert source["moved"] and source["broker"] == OLD and source["new_broker"] == NEW_DB
    assert source["queues"] == ["high", "default", "low"]
    assert source["moves"] == {"high": "high", "default": "default", "low": "low"}


def test_a_dropped_queue_leaves_alone_and_goes_where_move_into_says():
    single = [{"name": "all", "queues": ["high", "default"]}]
    [source] = celery_stranded_sources([host("vm1", SPLIT, single)])
    assert not source["moved"]
    assert source["queues"] == ["low"]
    assert source["moves"] == {"low": ""}
    [source] = celery_stranded_sources([host("vm1", SPLIT, single)], "default")
    assert source["moves"] == {"low": "default"}


def test_a_host_of_an_older_toolkit_is_checked_for_its_layout_only():
    hosts = [{"host": "vm1", "recorded": {"groups": SPLIT}, "broker": NEW_DB, "groups": SPLIT}]
    assert celery_stranded_sources(hosts) == []


def test_empty_old_queues_pass():
    sources = celery_stranded_sources([host("vm1", SPLIT, SPLIT, new=NEW_DB)])
    counts = {"vm1": {"queues": {"high": 0, "default": 0, "low": 0}, "unacked_by_key": {}}}
    assert celery_stranded_refusal(sources, counts, False) == {"refuse": False, "lines": []}


def test_a_broker_move_with_messages_is_refused_with_the_counts_and_the_ways_out():
    sources = celery_stranded_sources([host("vm1", SPLIT, SPLIT, new=NEW_DB)])
    counts = {
        "vm1": {
            "queues": {"high": 0, "default": 5, "low": 2},
            "unacked_by_key": {"default": 1, "other": 1},
        }
    }
    verdict = celery_stranded_refusal(sources, counts, False)
    assert verdict["refuse"]
    text = "\n".join(verdict["lines"])
    assert verdict["lines"][0] == (
        "deploy.yml would strand 9 queued messages (no worker would read them again):"
    )
    assert (
        "broker 10.0.0.5:6379/0 -> 10.0.0.5:6379/1: default 5 waiting, low 2 waiting, 2 unacked"
        in text
    )
    assert "high 0" not in text
    assert "playbooks/move-queues.yml" in text and "celery_deploy_drop_queued: true" in text
    assert len(verdict["lines"]) <= 5


def test_a_dropped_queue_counts_only_its_own_unacked_entries_and_asks_for_a_destination():
    single = [{"name": "all", "queues": ["high", "default"]}]
    sources = celery_stranded_sources([host("vm1", SPLIT, single)])
    counts = {"vm1": {"queues": {"low": 3}, "unacked_by_key": {"high": 4, "low": 1}}}
    verdict = celery_stranded_refusal(sources, counts, False)
    assert verdict["refuse"]
    assert "would strand 4 queued messages" in verdict["lines"][0]
    line = verdict["lines"][1]
    assert "queues the new layout no longer consumes: low 3 waiting, 1 unacked" in line
    assert "celery_deploy_move_into" in verdict["lines"][2]


@pytest.mark.parametrize("drop", [True, "true", "yes"])
def test_the_user_may_drop_them(drop):
    sources = celery_stranded_sources([host("vm1", SPLIT, SPLIT, new=NEW_DB)])
    counts = {"vm1": {"queues": {"low": 2}, "unacked_by_key": {}}}
    verdict = celery_stranded_refusal(sources, counts, drop)
    assert not verdict["refuse"]
    assert verdict["lines"][0].startswith("deploy.yml leaves behind 2 queued messages")
    assert "celery_deploy_drop_queued is true" in verdict["lines"][-1]


def test_a_broker_that_cannot_be_counted_is_refused_unless_dropped():
    sources = celery_stranded_sources([host("vm1", SPLIT, SPLIT, new=NEW_DB)])
    counts = {"vm1": {"error": "ConnectionError: Error 111 connecting to 10.0.0.5:6379."}}
    verdict = celery_stranded_refusal(sources, counts, False)
    assert verdict["refuse"]
    assert "could not count" in verdict["lines"][0]
    assert "ConnectionError" in verdict["lines"][1]
    assert not celery_stranded_refusal(sources, {}, True)["refuse"]


def test_filters_are_exported():
    assert set(FilterModule().filters()) == {
        "celery_stranded_answers",
        "celery_stranded_brokers",
        "celery_stranded_outside",
        "celery_stranded_sources",
        "celery_stranded_refusal",
    }


def test_a_message_left_in_the_journal_of_an_interrupted_move_is_refused_so_the_move_runs_again():
    sources = celery_stranded_sources([host("vm1", SPLIT, SPLIT, new=NEW_DB)])
    counts = {"vm1": {"queues": {"high": 0, "default": 0, "low": 0}, "unacked_by_key": {}}}
    assert not celery_stranded_refusal(sources, counts, False)["refuse"]
    counts["vm1"]["journal"] = 1
    verdict = celery_stranded_refusal(sources, counts, False)
    assert verdict["refuse"]
    assert "would strand 1 queued messages" in verdict["lines"][0]
    assert "1 in the journal of an interrupted move" in verdict["lines"][1]


BROKERS = {"vm0": {"redis_bind_addresses": ["127.0.0.1", "10.0.0.5"], "ansible_host": "vm0"}}
LOOPBACK = {"host": "127.0.0.1", "port": 6379, "db": 0}


def test_the_broker_host_on_loopback_and_the_others_on_its_address_are_one_redis():
    # the broker host itself may use 127.0.0.1 while the other workers use 10.0.0.5 (first)
    hosts = [
        host("vm2", SPLIT[1:], SPLIT[1:], old=OLD, new=OLD),
        host("vm0", SPLIT[:1], SPLIT[:1], old=LOOPBACK, new=LOOPBACK),
    ]
    assert celery_stranded_sources(hosts, "", BROKERS) == []
    # a host that changes how it names the same Redis moves nothing
    hosts = [host("vm0", SPLIT, SPLIT, old=OLD, new=LOOPBACK)]
    assert celery_stranded_sources(hosts, "", BROKERS) == []
    # nor does a new port on the same Redis (redis_port changed with it)
    hosts = [host("vm2", SPLIT, SPLIT, old=OLD, new={**OLD, "port": 6380})]
    assert celery_stranded_sources(hosts, "", BROKERS) == []


def test_one_redis_under_two_names_is_one_source_counted_and_moved_by_one_host():
    hosts = [
        host("vm2", SPLIT[1:], SPLIT[1:], old=OLD, new=NEW_DB),
        host("vm0", SPLIT[:1], SPLIT[:1], old=LOOPBACK, new={**LOOPBACK, "db": 1}),
    ]
    [source] = celery_stranded_sources(hosts, "", BROKERS)
    assert source["host"] == "vm2" and source["moved"]
    assert source["queues"] == ["low", "high", "default"]
    assert source["moves"] == {"low": "low", "high": "high", "default": "default"}


def test_a_broker_host_no_longer_in_the_inventory_is_a_move():
    hosts = [host("vm2", SPLIT, SPLIT, old={**OLD, "host": "10.0.0.9"}, new=OLD)]
    [source] = celery_stranded_sources(hosts, "", BROKERS)
    assert source["moved"] and source["broker"]["host"] == "10.0.0.9"


def test_the_brokers_read_from_the_inventory_else_the_role_defaults():
    hostvars = {"vm0": {"redis_bind_addresses": ["10.0.0.5"]}, "vm1": {"ansible_host": "b1"}}
    defaults = {"redis_bind_addresses": ["127.0.0.1", "-::1"]}
    assert celery_stranded_brokers(["vm0", "vm1"], hostvars, defaults) == {
        "vm0": {"redis_bind_addresses": ["10.0.0.5"], "ansible_host": "vm0"},
        "vm1": {"redis_bind_addresses": ["127.0.0.1", "-::1"], "ansible_host": "b1"},
    }


def test_the_answers_are_the_last_line_each_run_printed_and_skipped_runs_are_left_out():
    item = {"host": "vm1", "broker": OLD, "new_broker": NEW_DB}
    results = [
        {"item": item, "rc": 0, "stdout": 'settings loaded\n{"answers": true}\n'},
        {"item": item, "rc": 0, "stdout": ""},
        {"item": item, "rc": 0, "stdout": "not json"},
        {"item": item, "rc": 1, "stdout": '{"answers": true}'},
        {"item": item, "rc": 127, "stdout": ""},
        {"item": {**item, "host": "vm2"}, "skipped": True},
    ]
    answers = celery_stranded_answers(results)
    assert [a["answer"] for a in answers] == [
        {"answers": True},
        {"error": "no answer"},
        {"error": "an answer that is not JSON"},
        {"error": "exit status 1"},
        {"error": "no answer, exit status 127"},
    ]
    assert answers[0]["new_broker"] == "10.0.0.5:6379/1" and answers[0]["host"] == "vm1"


def test_a_queue_read_by_a_host_outside_the_play_is_no_dropped_queue():
    hostvars = {
        "vm2": {"celery_workers_groups": SPLIT[1:], "celery_app_broker_url": "redis://:p@10.0.0.5"},
        "vm3": {},
    }
    outside = celery_stranded_outside(["vm2", "vm3"], hostvars, SPLIT[:1], "redis://:p@10.0.0.5/1")
    assert outside == [
        {"host": "vm2", "recorded": {}, "broker": OLD, "groups": SPLIT[1:]},
        {"host": "vm3", "recorded": {}, "broker": NEW_DB, "groups": SPLIT[:1]},
    ]
    # --limit vm1: vm1 recorded both groups and keeps fast; vm2, outside, reads low
    played = [host("vm1", SPLIT, SPLIT[:1])]
    assert len(celery_stranded_sources(played)) == 1
    assert celery_stranded_sources(played + outside[:1]) == []
