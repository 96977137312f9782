"""issue 22: the rules of a replicated broker (plugins/filter/celery_sentinel.py), run by
celery_inventory_errors before any host and, for one node's settings alone, by the redis role's
preflight (celery_sentinel_node_errors). Each rule's failing and passing case; a sound
three-node broker gives no refusal, a single broker none of the new ones; no message holds a
secret.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import once
from role_settings import settings

from celery_broker import celery_broker_endpoint
from celery_inventory import RULE_VARIABLES, celery_inventory_errors
from celery_secrets import MINIMUM_LENGTH
from celery_sentinel import (
    SAME_ON_EVERY_NODE,
    SECRET_SETTINGS,
    SENTINEL_SECRETS,
    SENTINEL_VARIABLES,
    FilterModule,
    celery_sentinel_node_errors,
    sentinel_errors,
)
from celery_tls import celery_tls_errors

ROOT = Path(__file__).resolve().parent.parent
NODES = ["b1", "b2", "b3"]
ALL = "b1, b2 and b3"
APP_PASSWORD = "a-real-app-secret-0123456789"
# The secrets as users have them: Sentinel's own (printable ASCII without space or quote, every
# other symbol), the replicas' with spaces and quotes (Redis's own file quotes it).
SECRETS = {
    "redis_password": "a-real-admin secret 'with' \"quotes\" 0123",
    "redis_sentinel_password": "a-real-sentinel-$(pw)&#`\\!-0123",
    "redis_sentinel_node_password": "a-real-node-password-0123",
    "redis_replication_password": "replica pw 'with' \"quotes\" & #04",
    "redis_exporter_password": "a-real-exporter-secret-0123",
}
ACL_USERS = [{"name": "shop", "password": APP_PASSWORD}]


def node(number: int, nodes: list[str] = NODES, **inventory) -> dict:
    """A broker node's settings: listening on 10.0.0.<number>, the sound secrets, redis_nodes as
    validate.yml hands it over (the group broker)."""
    values = {
        "redis_bind_addresses": ["127.0.0.1", f"10.0.0.{number}"],
        "redis_nodes": nodes,
        "redis_acl_users": ACL_USERS,
        **SECRETS,
        **inventory,
    }
    return settings(**values)


def broker(nodes: list[str] = NODES, host_vars: dict | None = None, **common) -> dict:
    """Each node's settings: `common` on every node (group_vars/broker), `host_vars` by host."""
    host_vars = host_vars or {}
    return {
        host: node(number, nodes, **{**common, **host_vars.get(host, {})})
        for number, host in enumerate(nodes, 1)
    }


def refusals(fleet: dict, brokers: list[str] | None = None, **groups) -> list[str]:
    """What sentinel_errors says of `fleet`, as celery_inventory_errors words it."""
    return once(sentinel_errors(list(fleet) if brokers is None else brokers, fleet, **groups))


def about(messages: list[str], var: str) -> list[str]:
    return [m for m in messages if m.startswith(f"{var} on ")]


def assert_no_secret(messages: list[str], *secrets: str) -> None:
    for secret in (*SECRETS.values(), APP_PASSWORD, *secrets):
        assert not any(secret in m for m in messages), secret


# --- the whole broker ---------------------------------------------------------------------------


def test_a_sound_three_node_broker_gives_no_refusal():
    assert refusals(broker()) == []


def test_a_sound_three_node_broker_passes_every_rule_of_the_inventory():
    """Through celery_inventory_errors (the playbook's entry), with no worker yet."""
    assert celery_inventory_errors({"broker": NODES}, broker()) == []


def test_five_nodes_pass():
    nodes = [f"b{n}" for n in range(1, 6)]
    assert refusals(broker(nodes)) == []


def test_a_single_broker_gets_none_of_the_new_refusals():
    """A single broker host with every new variable at its default (no sentinel password, no
    announce address: it listens on loopback only) validates exactly as before."""
    hv = settings(
        redis_password=SECRETS["redis_password"],
        redis_default_user_enabled=True,
        redis_nodes=["b1"],
        celery_app_broker_url=f"redis://:{quote(SECRETS['redis_password'], safe='')}@127.0.0.1/0",
        flower_basic_auth_user="ops",
        flower_basic_auth_password="a-real-flower-secret-42",
        redis_exporter_password=SECRETS["redis_exporter_password"],
        celery_app_environment={},
    )
    assert hv["redis_announce_address"] == "" and hv["redis_sentinel_password"] == ""
    assert refusals({"b1": hv}) == []
    groups = {"broker": ["b1"], "celery_workers": ["b1"], "flower": ["b1"]}
    assert celery_inventory_errors(groups, {"b1": hv}) == []
    # a single node in the role's preflight: nothing to check
    assert celery_sentinel_node_errors(hv, "b1") == []


def test_the_rules_read_only_what_validate_yml_hands_over():
    """validate.yml notes RULE_VARIABLES of each host: every variable the rules compare or read."""
    reads = {*SENTINEL_VARIABLES, *SAME_ON_EVERY_NODE, "redis_bind_addresses", "redis_port"}
    reads |= {"redis_exporter_user", "redis_exporter_port", "node_exporter_port", "flower_port"}
    reads |= {"celery_exporter_port", "celery_toolkit_sandbox", "redis_acl_users"}
    assert reads - set(RULE_VARIABLES) == set()


def test_the_role_preflight_hands_over_what_the_node_rules_read():
    tasks = yaml.safe_load((ROOT / "roles/redis/tasks/preflight.yml").read_text())
    task = next(t for t in tasks if "celery_sentinel_node_errors" in str(t))
    given = set(re.findall(r"'([a-z_]+)':", task["vars"]["__redis_sentinel_errors"]))
    assert set(SENTINEL_VARIABLES) - {"redis_maxmemory_policy"} <= given
    # on every node, a single broker too: the filter then checks min-replicas-to-write only
    # (a single broker waiting for replicas would refuse every write; the role alone refuses it)
    assert "when" not in task


def test_the_secrets_have_a_minimum_length():
    assert {MINIMUM_LENGTH[name] for name in SENTINEL_SECRETS} == {16}


# --- rule 1: an odd number of nodes, at least 3 --------------------------------------------------


@pytest.mark.parametrize("count", [2, 4, 6])
def test_an_even_number_of_nodes_is_refused_once(count):
    nodes = [f"b{n}" for n in range(1, count + 1)]
    messages = about(refusals(broker(nodes)), "redis_nodes")
    assert len(messages) == 1, messages
    assert f" holds {count} nodes (" in messages[0]
    assert "needs an odd number of them, at least 3" in messages[0]
    assert "2 nodes cannot elect one when one is lost" in messages[0]


@pytest.mark.parametrize("count", [3, 5, 7])
def test_an_odd_number_of_nodes_of_at_least_three_passes(count):
    nodes = [f"b{n}" for n in range(1, count + 1)]
    assert about(refusals(broker(nodes)), "redis_nodes") == []


# --- rule 2: the quorum ------------------------------------------------------------------------


@pytest.mark.parametrize(("count", "quorum"), [(3, 1), (3, 4), (3, -1), (5, 2), (5, 6)])
def test_a_quorum_that_is_no_majority_is_refused(count, quorum):
    nodes = [f"b{n}" for n in range(1, count + 1)]
    messages = about(refusals(broker(nodes, redis_sentinel_quorum=quorum)), "redis_sentinel_quorum")
    majority = count // 2 + 1
    assert len(messages) == 1, messages
    assert (
        f" is {quorum}: with {count} nodes give 0 (a majority, {majority}) or a number from "
        f"{majority} to {count}. "
    ) in messages[0]


@pytest.mark.parametrize(("count", "quorum"), [(3, 0), (3, 2), (3, 3), (5, 3), (5, 5), (3, "2")])
def test_a_quorum_of_a_majority_or_zero_passes(count, quorum):
    nodes = [f"b{n}" for n in range(1, count + 1)]
    assert (
        about(refusals(broker(nodes, redis_sentinel_quorum=quorum)), "redis_sentinel_quorum") == []
    )


def test_the_quorum_message_names_every_node_once():
    assert about(refusals(broker(redis_sentinel_quorum=1)), "redis_sentinel_quorum") == [
        f"redis_sentinel_quorum on {ALL} is 1: with 3 nodes give 0 (a majority, 2) or a number "
        "from 2 to 3. Fewer sentinels would let a minority cut off from the others hold the "
        "primary down; more than the nodes never agree, and no failover starts."
    ]


# --- rule 2b: min-replicas-to-write ------------------------------------------------------------


@pytest.mark.parametrize(("count", "value"), [(3, 3), (3, -1), (5, 5), (5, 9)])
def test_more_replicas_to_write_than_replicas_are_refused(count, value):
    nodes = [f"b{n}" for n in range(1, count + 1)]
    fleet = broker(nodes, redis_min_replicas_to_write=value)
    messages = about(refusals(fleet), "redis_min_replicas_to_write")
    assert len(messages) == 1, messages
    assert messages[0].endswith(
        f" is {value}: with {count} nodes give 0 (the primary never refuses a write) or a number "
        f"from 1 to {count - 1}, its replicas: more would refuse every task."
    )
    assert celery_sentinel_node_errors(fleet["b1"], "b1")[0].startswith(
        f"redis_min_replicas_to_write on b1 is {value}: with {count} nodes"
    )


@pytest.mark.parametrize(("count", "value"), [(3, 0), (3, 1), (3, 2), (5, 4), (3, "1")])
def test_replicas_to_write_up_to_the_replicas_pass(count, value):
    nodes = [f"b{n}" for n in range(1, count + 1)]
    fleet = broker(nodes, redis_min_replicas_to_write=value)
    assert about(refusals(fleet), "redis_min_replicas_to_write") == []
    assert celery_sentinel_node_errors(fleet["b1"], "b1") == []


def test_a_max_lag_below_one_second_is_refused():
    messages = refusals(broker(redis_min_replicas_to_write=1, redis_min_replicas_max_lag=0))
    assert about(messages, "redis_min_replicas_max_lag") == [
        f"redis_min_replicas_max_lag on {ALL} is 0: give the seconds within which a replica's "
        "acknowledgement counts, 1 or more."
    ]


def test_a_single_broker_that_would_wait_for_replicas_is_refused():
    hv = settings(redis_nodes=["b1"], redis_min_replicas_to_write=1)
    said = (
        "redis_min_replicas_to_write on b1 is 1: a broker without replicas would refuse every "
        "task. Give 0, or put 3 (or 5) hosts in the group broker."
    )
    assert about(refusals({"b1": hv}), "redis_min_replicas_to_write") == [said]
    assert celery_sentinel_node_errors(hv, "b1") == [said]


# --- rule 3: the three secrets -----------------------------------------------------------------


@pytest.mark.parametrize("var", SENTINEL_SECRETS)
@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("", " is empty: set it (at least 16 characters)"),
        (None, " is empty: set it (at least 16 characters)"),
        ("short-secret", " is too short: set it (at least 16 characters)"),
        ("CHANGE-ME-at-least-16-characters", " still holds a sample value"),
        ("sandbox-sentinel-password-0123", " still holds a sample value"),
    ],
)
def test_a_secret_unset_short_or_sample_is_refused(var, value, said):
    messages = about(refusals(broker(**{var: value})), var)
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{var} on {ALL}{said}")
    assert_no_secret(messages, *filter(None, [value]))


@pytest.mark.parametrize("var", SENTINEL_SECRETS)
def test_a_sample_secret_passes_in_the_sandbox(var):
    fleet = broker(**{var: "sandbox-sentinel-password-0123"}, celery_toolkit_sandbox=True)
    assert about(refusals(fleet), var) == []


@pytest.mark.parametrize("var", SENTINEL_SECRETS)
@pytest.mark.parametrize(
    ("char", "said"), [("\n", "a newline"), ("\x00", "a NUL"), ("\t", "a tab")]
)
def test_a_secret_with_a_control_character_is_refused(var, char, said):
    value = f"a-real-secret{char}0123456789"
    messages = about(refusals(broker(**{var: value})), var)
    assert len(messages) == 1 and messages[0].startswith(f"{var} on {ALL} holds {said}: ")
    assert_no_secret(messages, value, "a-real-secret")


def test_the_replication_password_may_hold_spaces_and_quotes():
    """Redis's own files carry it quoted; Sentinel never stores it."""
    fleet = broker(redis_replication_password='a replica\'s "pass word" 0123')
    assert refusals(fleet) == []


# --- rule 4: what Sentinel writes back unquoted --------------------------------------------------


@pytest.mark.parametrize("var", ["redis_sentinel_password", "redis_sentinel_node_password"])
@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("sentinel pass word 0123", "a space"),
        ('sentinel"password"0123', "a double quote"),
        ("sentinel'password'0123", "a single quote"),
        ("sentinel-pässword-0123", "a character that is not printable ASCII"),
    ],
)
def test_a_sentinel_password_sentinel_cannot_write_back_is_refused(var, value, said):
    messages = about(refusals(broker(**{var: value})), var)
    assert messages == [
        f"{var} on {ALL} holds {said}: Sentinel rewrites its configuration file itself and "
        "writes this value back unquoted, so a space or a quote would stop the sentinel at its "
        "next start. Choose a password of printable ASCII without a space or a quote (letters, "
        "digits and the other symbols are fine)."
    ]
    assert_no_secret(messages, value)


@pytest.mark.parametrize("var", ["redis_sentinel_password", "redis_sentinel_node_password"])
def test_a_sentinel_password_of_any_other_printable_ascii_passes(var):
    value = "!#$%&()*+,-./:;<=>?@[\\]^_`{|}~0123456789AZaz"
    assert about(refusals(broker(**{var: value})), var) == []


@pytest.mark.parametrize("name", ["my master", "celery's", 'celery"1', "celery/1", "célery", ""])
def test_a_master_name_that_is_not_a_word_is_refused(name):
    messages = about(
        refusals(broker(redis_sentinel_master_name=name)), "redis_sentinel_master_name"
    )
    assert messages == [
        f"redis_sentinel_master_name on {ALL} is {name!r}: the sentinels' name of the primary "
        "(the clients' master_name) is one word of letters, digits, '.', '_' and '-' (Sentinel "
        "rewrites its configuration file itself and writes this value back unquoted, so a space "
        "or a quote would stop the sentinel at its next start). Use e.g. celery, the default."
    ]


@pytest.mark.parametrize("name", ["celery", "Broker.main_1-a", "0"])
def test_a_master_name_of_letters_digits_dot_underscore_and_dash_passes(name):
    fleet = broker(redis_sentinel_master_name=name)
    assert about(refusals(fleet), "redis_sentinel_master_name") == []


@pytest.mark.parametrize("user", ["sen tinel", 'sen"tinel', "sen'tinel", ""])
def test_a_sentinel_user_sentinel_cannot_write_back_is_refused(user):
    messages = about(refusals(broker(redis_sentinel_node_user=user)), "redis_sentinel_node_user")
    assert len(messages) == 1 and messages[0].startswith(
        f"redis_sentinel_node_user on {ALL} is {user!r}: the sentinels log in to every node as a "
        "Redis user of their own, a plain word (letters, digits, '.', '_' and '-') (Sentinel "
        "rewrites its configuration file itself and writes this value back unquoted"
    )


# --- rule 5: the settings every node shares ------------------------------------------------------

OTHER_VALUES = {
    "redis_password": "another-admin-password-0123",
    "redis_admin_user": "operator",
    "redis_acl_users": [{"name": "shop", "password": "another-app-password-0123"}],
    "redis_sentinel_password": "another-sentinel-password-0123",
    "redis_sentinel_node_user": "sentinel-2",
    "redis_sentinel_node_password": "another-node-password-0123",
    "redis_replication_user": "replica-2",
    "redis_replication_password": "another-replica-password-0123",
    "redis_port": 6380,
    "redis_sentinel_port": 26380,
    "redis_sentinel_master_name": "celery-2",
    "redis_maxmemory": "512mb",
    "redis_maxmemory_policy": "volatile-lru",
    "redis_min_replicas_to_write": 1,
    "redis_min_replicas_max_lag": 20,
    "redis_databases": 32,
    "redis_tls_enabled": True,
    "redis_nodes": ["b1", "b2", "b4"],
    "redis_primary": "b2",
}


def test_every_shared_setting_has_a_case():
    assert set(OTHER_VALUES) == set(SAME_ON_EVERY_NODE)


@pytest.mark.parametrize("var", SAME_ON_EVERY_NODE)
def test_a_setting_that_differs_on_one_node_is_refused_naming_the_hosts(var):
    fleet = broker(host_vars={"b3": {var: OTHER_VALUES[var]}})
    messages = about(refusals(fleet), var)
    shared = [m for m in messages if "every node of a replicated broker needs the same" in m]
    assert len(shared) == 1, messages
    assert shared[0].startswith(f"{var} on b3 is ")
    assert shared[0].endswith(
        " b1 and b2 have: every node of a replicated broker needs the same value, as any of them "
        "may become the primary at a failover (a replica with another password or maxmemory "
        "fails there). Set it once, in group_vars/broker."
        if var in SECRET_SETTINGS
        else " on b1 and b2: every node of a replicated broker needs the same value, as any of "
        "them may become the primary at a failover (a replica with another password or "
        "maxmemory fails there). Set it once, in group_vars/broker."
    )


@pytest.mark.parametrize(
    "var",
    [
        "redis_password",
        "redis_acl_users",
        "redis_sentinel_password",
        "redis_sentinel_node_password",
        "redis_replication_password",
    ],
)
def test_a_secret_that_differs_is_named_never_printed(var):
    fleet = broker(host_vars={"b3": {var: OTHER_VALUES[var]}})
    messages = about(refusals(fleet), var)
    assert messages == [
        f"{var} on b3 is not the one b1 and b2 have: every node of a replicated broker needs the "
        "same value, as any of them may become the primary at a failover (a replica with another "
        "password or maxmemory fails there). Set it once, in group_vars/broker."
    ]
    assert_no_secret(messages, "another-", "a-real-")


def test_a_setting_that_differs_shows_both_values_when_no_secret():
    fleet = broker(host_vars={"b3": {"redis_maxmemory": "512mb"}})
    assert about(refusals(fleet), "redis_maxmemory")[0].startswith(
        "redis_maxmemory on b3 is '512mb' there but '0' on b1 and b2: "
    )


def test_three_values_on_three_nodes_compare_with_the_first():
    fleet = broker(host_vars={"b2": {"redis_port": 6380}, "b3": {"redis_port": 6381}})
    messages = about(refusals(fleet), "redis_port")
    assert [m.split(":")[0] for m in messages] == [
        "redis_port on b2 is 6380 there but 6379 on b1",
        "redis_port on b3 is 6381 there but 6379 on b1",
    ]


def test_the_same_value_written_otherwise_passes():
    """6379 and "6379", true and "yes", redis_nodes in another order are the same."""
    fleet = broker(
        host_vars={
            "b2": {"redis_port": "6379", "redis_nodes": ["b3", "b2", "b1"], "redis_primary": "b1"},
            "b3": {"redis_databases": "16", "redis_tls_enabled": "no"},
        },
        redis_primary="b1",
    )
    assert refusals(fleet) == []


# --- rule 6: the address each node announces -----------------------------------------------------


def test_a_node_that_listens_on_loopback_only_is_refused():
    fleet = broker(host_vars={"b2": {"redis_bind_addresses": ["127.0.0.1", "-::1"]}})
    assert about(refusals(fleet), "redis_announce_address") == [
        "redis_announce_address on b2 is empty: the other nodes, the sentinels and the clients "
        "reach the node at this address, and its redis_bind_addresses (127.0.0.1, ::1) hold none "
        "but loopback. Add the node's private address to redis_bind_addresses (the first that is "
        "not loopback is the default), or set redis_announce_address to one it holds."
    ]


@pytest.mark.parametrize(
    ("address", "said"),
    [
        ("broker-2.internal", " is 'broker-2.internal', not an IP address: the sentinels resolve"),
        ("127.0.0.1", " is 127.0.0.1, which the other nodes cannot reach"),
        ("::1", " is ::1, which the other nodes cannot reach"),
        ("0.0.0.0", " is 0.0.0.0, which the other nodes cannot reach"),
        ("10.0.0.9", " is 10.0.0.9, an address Redis does not listen on there "),
    ],
)
def test_an_announce_address_the_others_cannot_reach_is_refused(address, said):
    fleet = broker(host_vars={"b2": {"redis_announce_address": address}})
    messages = about(refusals(fleet), "redis_announce_address")
    assert len(messages) == 1 and messages[0].startswith(f"redis_announce_address on b2{said}")


@pytest.mark.parametrize(
    ("binds", "address"),
    [
        (["127.0.0.1", "10.0.0.2"], "10.0.0.2"),
        (["127.0.0.1", "-10.0.0.2"], "10.0.0.2"),
        (["0.0.0.0"], "10.0.0.2"),
        (["::"], "fd00::2"),
        (["127.0.0.1", "fd00::2"], "fd00:0::2"),
    ],
)
def test_an_announce_address_the_node_listens_on_passes(binds, address):
    fleet = broker(
        host_vars={"b2": {"redis_bind_addresses": binds, "redis_announce_address": address}}
    )
    assert about(refusals(fleet), "redis_announce_address") == []


def test_the_default_announce_address_is_the_first_that_is_not_loopback():
    hv = node(2, redis_bind_addresses=["127.0.0.1", "-::1", "-10.0.0.2", "10.0.1.2"])
    assert hv["redis_announce_address"] == "10.0.0.2"


def test_two_nodes_announcing_one_address_are_refused_once():
    fleet = broker(
        host_vars={
            "b2": {"redis_bind_addresses": ["0.0.0.0"], "redis_announce_address": "10.0.0.1"},
        }
    )
    assert about(refusals(fleet), "redis_announce_address") == [
        "redis_announce_address on b1 and b2 is 10.0.0.1 on each: every node needs an address of "
        "its own, where the others and the clients reach it. Set each node's in its host_vars "
        "(or its redis_bind_addresses)."
    ]


# --- rule 7: no TLS between the nodes yet --------------------------------------------------------


def test_tls_on_a_replicated_broker_is_refused():
    assert about(refusals(broker(redis_tls_enabled=True)), "redis_tls_enabled") == [
        f"redis_tls_enabled on {ALL} is true: a replicated broker speaks plain TCP between its "
        "nodes for now (issue 22): set redis_tls_enabled: false, or keep a single broker host for "
        "TLS."
    ]


def test_tls_on_a_single_broker_gets_no_new_refusal():
    fleet = {"b1": settings(redis_tls_enabled=True, redis_nodes=["b1"])}
    assert refusals(fleet) == []


# --- rule 8: redis_nodes and redis_primary against the group broker ------------------------------


def test_a_primary_that_is_no_broker_host_is_refused():
    assert about(refusals(broker(redis_primary="b9")), "redis_primary") == [
        f"redis_primary on {ALL} is 'b9', not a host of the group broker ({ALL}): name the one to "
        "be the primary on the first deploy, or leave it unset (the first of them)."
    ]


def test_a_primary_that_is_a_broker_host_passes():
    assert refusals(broker(redis_primary="b3")) == []


@pytest.mark.parametrize("nodes", [["b1", "b2"], ["b1", "b2", "b3", "b4"], ["b1", "b1", "b2"]])
def test_nodes_that_are_not_the_group_broker_are_refused(nodes):
    fleet = broker(redis_primary="b1")
    for hv in fleet.values():
        hv["redis_nodes"] = nodes
    messages = about(refusals(fleet), "redis_nodes")
    assert (
        f"redis_nodes on {ALL} is {nodes!r}, not the hosts of the group broker ({ALL}): every "
        "broker host is a node and no other host is; leave redis_nodes unset (the group broker)."
    ) in messages


def test_nodes_set_on_a_single_broker_are_refused():
    """redis_nodes set to more hosts would make the one broker host a node of a broker alone."""
    fleet = {"b1": node(1, ["b1", "b2", "b3"])}
    assert refusals(fleet) == [
        "redis_nodes on b1 is ['b1', 'b2', 'b3'], not the hosts of the group broker (b1): every "
        "broker host is a node and no other host is; leave redis_nodes unset (the group broker)."
    ]


def test_nodes_in_another_order_pass():
    fleet = broker(redis_primary="b1")
    for hv in fleet.values():
        hv["redis_nodes"] = ["b3", "b1", "b2"]
    assert refusals(fleet) == []


# --- rule 9: the replicas' and the sentinels' users ----------------------------------------------


@pytest.mark.parametrize("var", ["redis_replication_user", "redis_sentinel_node_user"])
@pytest.mark.parametrize("user", ["default", "admin", "shop", "redis-exporter", "re plica", "-x"])
def test_a_user_that_is_not_one_of_its_own_is_refused(var, user):
    messages = about(refusals(broker(**{var: user})), var)
    assert len(messages) == 1 and messages[0].startswith(f"{var} on {ALL} is {user!r}: ")
    assert "that is not `default`, redis_admin_user" in messages[0]


def test_the_replicas_and_the_sentinels_as_one_user_are_refused():
    messages = refusals(broker(redis_replication_user="node", redis_sentinel_node_user="node"))
    assert len(about(messages, "redis_replication_user")) == 1
    assert len(about(messages, "redis_sentinel_node_user")) == 1


def test_the_exporter_user_is_free_when_the_exporter_does_not_run():
    fleet = broker(redis_replication_user="redis-exporter", redis_exporter_enabled=False)
    assert about(refusals(fleet), "redis_replication_user") == []


@pytest.mark.parametrize("user", ["replica", "Replica.2", "repl_user-1"])
def test_a_user_of_its_own_passes(user):
    assert about(refusals(broker(redis_replication_user=user)), "redis_replication_user") == []


# --- rule 10: the sentinel's port ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "taken", "common"),
    [
        (6379, "redis_port", {}),
        (9121, "redis_exporter_port", {}),
        (9100, "node_exporter_port", {}),
        (7000, "redis_port", {"redis_port": 7000}),
    ],
)
def test_a_sentinel_port_another_service_takes_is_refused(port, taken, common):
    messages = about(refusals(broker(redis_sentinel_port=port, **common)), "redis_sentinel_port")
    assert messages == [
        f"redis_sentinel_port on {ALL} is {port}, which {taken} takes on this host: the sentinel "
        "listens on Redis's addresses and could not start. Give it a port of its own (26379 is "
        "Sentinel's)."
    ]


def test_a_sentinel_port_flower_takes_on_a_flower_host_is_refused():
    messages = refusals(broker(redis_sentinel_port=5555), flowers=["b1"])
    assert about(messages, "redis_sentinel_port")[0].startswith(
        "redis_sentinel_port on b1 is 5555, which flower_port takes on this host"
    )
    assert refusals(broker(redis_sentinel_port=5555)) == []


@pytest.mark.parametrize("port", [0, 70000])
def test_a_sentinel_port_out_of_range_is_refused(port):
    assert about(refusals(broker(redis_sentinel_port=port)), "redis_sentinel_port") == [
        f"redis_sentinel_port on {ALL} is {port}: give a TCP port from 1 to 65535."
    ]


def test_the_port_of_an_exporter_that_does_not_run_is_free():
    fleet = broker(redis_sentinel_port=9121, redis_exporter_enabled=False)
    assert refusals(fleet) == []


# --- Sentinel's times ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "var", ["redis_sentinel_down_after_ms", "redis_sentinel_failover_timeout_ms"]
)
def test_a_time_of_zero_is_refused_and_one_passes(var):
    assert about(refusals(broker(**{var: 0})), var) == [
        f"{var} on {ALL} is 0: Sentinel refuses a time of 0 or less and would not start."
    ]
    assert refusals(broker(**{var: 1})) == []


# --- the role's preflight: one node alone --------------------------------------------------------


def test_the_preflight_filter_is_exposed():
    assert FilterModule().filters()["celery_sentinel_node_errors"] is celery_sentinel_node_errors


def test_a_sound_node_passes_the_preflight():
    assert celery_sentinel_node_errors(node(1), "b1") == []


def test_the_preflight_says_what_one_node_says_alone():
    hv = node(
        2,
        redis_bind_addresses=["127.0.0.1"],
        redis_sentinel_password="a sentinel password",
        redis_replication_password="",
        redis_replication_user="admin",
        redis_sentinel_port=6379,
        redis_sentinel_quorum=1,
    )
    messages = celery_sentinel_node_errors(hv, "b2")
    assert [m.split(" ")[0] for m in messages] == [
        "redis_sentinel_quorum",
        "redis_replication_password",
        "redis_sentinel_password",
        "redis_replication_user",
        "redis_sentinel_port",
        "redis_announce_address",
    ]
    assert all(m.split(" ")[1:3] == ["on", "b2"] for m in messages)
    assert_no_secret(messages, "a sentinel password")


def test_the_preflight_refuses_a_primary_or_a_host_outside_redis_nodes():
    assert celery_sentinel_node_errors(node(1, redis_primary="b9"), "b1") == [
        f"redis_primary on b1 is 'b9', not a host of redis_nodes ({ALL}): name the one to be the "
        "primary on the first deploy, or leave it unset (the first of them)."
    ]
    assert celery_sentinel_node_errors(node(4), "b4") == [
        f"redis_nodes on b4 does not hold this host ({ALL}): list every node of the broker, this "
        "one too."
    ]


def test_the_preflight_counts_redis_nodes():
    messages = celery_sentinel_node_errors(node(1, ["b1", "b2"]), "b1")
    assert [m.split(" ")[0] for m in messages] == ["redis_nodes"]


def test_the_preflight_of_a_single_node_checks_nothing():
    hv = settings(redis_nodes=["b1"], redis_tls_enabled=True, redis_sentinel_port=6379)
    assert celery_sentinel_node_errors(hv, "b1") == []


# --- rule 11: the app's and Flower's URLs go through the sentinels -------------------------------

SENTINEL_URL = f"sentinel://shop:{APP_PASSWORD}@/0"
URL_VARS = ["celery_app_broker_url", "flower_broker_url", "celery_app_result_backend"]
HOST_LEFT_OUT = (
    ": leave the host out and write one part, sentinel://USER:PASSWORD@/DB: the toolkit writes "
    "one part per broker node itself (its redis_announce_address and redis_sentinel_port), so "
    "the app follows the primary through every failover."
)


def client(**inventory) -> dict:
    """A worker and Flower host whose URLs all go through the sentinels (the result backend on
    database 1), as a user of redis_acl_users."""
    values = {
        "celery_app_broker_url": SENTINEL_URL,
        "flower_broker_url": SENTINEL_URL,
        "celery_app_result_backend": f"sentinel://shop:{APP_PASSWORD}@/1",
        "flower_basic_auth_user": "ops",
        "flower_basic_auth_password": "a-real-flower-secret-42",
        "celery_app_environment": {},
        **inventory,
    }
    return settings(**values)


def fleet_with_clients(hosts=("w1",), nodes=NODES, common=None, **inventory) -> tuple:
    """The broker `nodes` (their settings: `common`) and worker and Flower `hosts`."""
    common = common or {}
    if len(nodes) > 1:
        fleet = broker(list(nodes), **common)
    else:  # one broker host (or none)
        fleet = {host: node(1, list(nodes), **common) for host in nodes}
    fleet.update({host: client(ansible_host=host, **inventory) for host in hosts})
    groups = {"broker": list(nodes), "celery_workers": list(hosts), "flower": list(hosts)}
    return fleet, groups


def every_refusal(fleet: dict, groups: dict) -> list[str]:
    """What validate.yml says: the inventory's rules and the TLS rules."""
    return celery_inventory_errors(groups, fleet) + celery_tls_errors(groups, fleet)


def test_the_host_less_sentinel_form_passes_every_rule_of_the_inventory():
    """The app, Flower and the result backend through the sentinels, as an ACL user: no refusal
    at all (the inventory's rules and the TLS rules)."""
    assert every_refusal(*fleet_with_clients()) == []


def test_the_default_user_in_the_sentinel_form_passes_with_its_password_url_encoded():
    password = quote(SECRETS["redis_password"], safe="")
    url = f"sentinel://:{password}@/0"
    fleet, groups = fleet_with_clients(
        common={"redis_default_user_enabled": True},
        celery_app_broker_url=url,
        flower_broker_url=url,
        celery_app_result_backend=url.replace("/0", "/2"),
    )
    assert every_refusal(fleet, groups) == []


def test_an_acl_password_with_reserved_characters_passes_url_encoded():
    password = "shop pass/with?#@;%'\"$(x)`"
    url = f"sentinel://shop:{quote(password, safe='')}@/0"
    fleet, groups = fleet_with_clients(
        common={"redis_acl_users": [{"name": "shop", "password": password}]},
        celery_app_broker_url=url,
        flower_broker_url="",
        celery_app_result_backend="",
    )
    assert every_refusal(fleet, groups) == []


def test_the_sentinel_form_with_a_query_passes():
    fleet, groups = fleet_with_clients(celery_app_broker_url=f"{SENTINEL_URL}?socket_timeout=5")
    assert every_refusal(fleet, groups) == []


@pytest.mark.parametrize("var", URL_VARS)
@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_a_url_naming_one_node_is_refused_once(var, scheme):
    """Whatever it names (a node, a node with the wrong password, a TLS URL): one refusal, that
    it names one node, with the form to write; the broker URL rules and the TLS rules say
    nothing more of it."""
    url = f"{scheme}://shop:wrong-password-0123@10.0.0.1:6379/0?ssl_cert_reqs=none"
    fleet, groups = fleet_with_clients(**{var: url})
    assert every_refusal(fleet, groups) == [
        f"{var} on w1 names one node of the replicated broker (3 hosts in broker), a read-only "
        "replica after a failover: write it as sentinel://USER:PASSWORD@/DB "
        "(sentinel://:PASSWORD@/DB for Redis's default user), without a host (the password "
        "URL-encoded): the toolkit names every sentinel of the broker group."
    ]


def test_one_refusal_names_every_host_sharing_the_url():
    url = f"redis://shop:{APP_PASSWORD}@10.0.0.1:6379/0"
    fleet, groups = fleet_with_clients(("w1", "w2", "w3"), celery_app_broker_url=url)
    found = every_refusal(fleet, groups)
    assert len(found) == 1 and found[0].startswith(
        "celery_app_broker_url on w1, w2 and w3 names one node of the replicated broker"
    )
    assert_no_secret(found)


def test_a_url_naming_one_node_with_tls_on_is_refused_once_beside_the_nodes_tls_rule():
    """The nodes' TLS rule says TLS is not there yet; the URL is refused for naming a node, not
    also for its scheme or its CA."""
    url = f"redis://shop:{APP_PASSWORD}@10.0.0.1:6379/0"
    fleet, groups = fleet_with_clients(
        common={"redis_tls_enabled": True}, celery_app_broker_url=url
    )
    found = every_refusal(fleet, groups)
    assert [m.split(" ")[0] for m in found] == [
        "redis_tls_enabled",
        "celery_app_broker_url",
        "redis_tls_cert_file",
        "redis_tls_key_file",
        "redis_tls_ca_file",
    ], found
    assert "names one node of the replicated broker" in found[1]


@pytest.mark.parametrize("var", URL_VARS)
@pytest.mark.parametrize(
    ("url", "lead"),
    [
        (f"sentinel://shop:{APP_PASSWORD}@10.0.0.1:26379/0", " names a sentinel's address"),
        (f"sentinel://shop:{APP_PASSWORD}@b1/0", " names a sentinel's address"),
        (f"sentinel://shop:{APP_PASSWORD}@:26379/0", " names a sentinel's address"),
        (
            f"sentinel://shop:{APP_PASSWORD}@10.0.0.1:26379/0;"
            f"sentinel://shop:{APP_PASSWORD}@10.0.0.2:26379/0",
            " holds several parts (';')",
        ),
        (
            f"sentinel://shop:{APP_PASSWORD}@/0;sentinel://shop:{APP_PASSWORD}@/0",
            " holds several parts (';')",
        ),
    ],
)
def test_a_sentinel_url_with_a_host_or_several_parts_is_refused_once(var, url, lead):
    fleet, groups = fleet_with_clients(**{var: url})
    found = every_refusal(fleet, groups)
    assert found == [f"{var} on w1{lead}{HOST_LEFT_OUT}"]
    assert_no_secret(found)


@pytest.mark.parametrize("var", URL_VARS)
def test_a_sentinel_url_with_another_password_is_refused_never_printed(var):
    fleet, groups = fleet_with_clients(**{var: "sentinel://shop:not-the-app-password-0123@/0"})
    found = every_refusal(fleet, groups)
    assert found == [
        f"{var} on w1 authenticates as the Redis user 'shop' with a password that is not the one "
        f"redis_acl_users gives 'shop' on {ALL} (nor its previous_password): use that password "
        "(URL-encoded) in the URL."
    ]
    assert_no_secret(found, "not-the-app-password-0123")


def test_the_previous_password_of_a_rotation_passes():
    users = [
        {"name": "shop", "password": "a-new-app-password-0123", "previous_password": APP_PASSWORD}
    ]
    fleet, groups = fleet_with_clients(common={"redis_acl_users": users})
    assert every_refusal(fleet, groups) == []


def test_a_sentinel_url_of_an_unknown_user_is_refused():
    fleet, groups = fleet_with_clients(celery_app_broker_url=f"sentinel://nobody:{APP_PASSWORD}@/0")
    assert every_refusal(fleet, groups) == [
        "celery_app_broker_url on w1 authenticates as the Redis user 'nobody', which is not in "
        f"redis_acl_users of {ALL} (users: shop): add it there, or use sentinel://:PASSWORD@... "
        "with redis_password for the default user."
    ]


def test_the_default_user_is_refused_where_the_broker_turns_it_off():
    password = quote(SECRETS["redis_password"], safe="")
    fleet, groups = fleet_with_clients(celery_app_broker_url=f"sentinel://:{password}@/0")
    found = every_refusal(fleet, groups)
    assert found == [
        "celery_app_broker_url on w1 logs in as Redis's default user, which is off on "
        f"{ALL} (redis_default_user_enabled: false; redis_password is the admin user's): log in "
        "as the app's own user of redis_acl_users, sentinel://USER:PASSWORD@/DB (the password "
        "URL-encoded), or set redis_default_user_enabled: true for the broker."
    ]


def test_the_default_user_with_another_password_is_refused():
    fleet, groups = fleet_with_clients(
        common={"redis_default_user_enabled": True},
        celery_app_broker_url="sentinel://:not-the-admin-password-0123@/0",
    )
    found = every_refusal(fleet, groups)
    assert len(found) == 1 and found[0].startswith(
        "celery_app_broker_url on w1 authenticates as Redis's default user with a password that "
        f"is not redis_password of {ALL}: write the URL as sentinel://:{{{{ vault_redis_password"
    )
    assert_no_secret(found, "not-the-admin-password-0123")


def test_a_secret_without_a_colon_is_refused_with_the_sentinel_form():
    fleet, groups = fleet_with_clients(celery_app_broker_url=f"sentinel://{APP_PASSWORD}@/0")
    found = every_refusal(fleet, groups)
    assert found == [
        "celery_app_broker_url on w1 has a secret before '@' but no ':' in front of it, so Redis "
        "would read it as a user name (and print it in errors): write "
        "sentinel://:SECRET@/DB."
    ]


NO_DATABASE = (
    " names no database: end it with /0 (or another database of redis_databases), as in "
    "sentinel://USER:PASSWORD@/0."
)


def no_such_database(db: str) -> str:
    return (
        f" names the database {db!r}, but Redis on {ALL} has databases 0 to 15 (redis_databases): "
        "end the URL with /0 (or another of those)."
    )


@pytest.mark.parametrize("var", URL_VARS)
@pytest.mark.parametrize(
    ("tail", "said"),
    [
        ("/16", no_such_database("16")),
        ("/x", no_such_database("x")),
        ("/0/1", no_such_database("0/1")),
        ("", NO_DATABASE),
        ("/", NO_DATABASE),
        ("?socket_timeout=5", NO_DATABASE),
    ],
)
def test_a_database_redis_does_not_have_or_none_is_refused(var, tail, said):
    fleet, groups = fleet_with_clients(**{var: f"sentinel://shop:{APP_PASSWORD}@{tail}"})
    assert every_refusal(fleet, groups) == [f"{var} on w1{said}"]


def test_a_database_within_redis_databases_passes():
    fleet, groups = fleet_with_clients(
        common={"redis_databases": 32},
        celery_app_result_backend=f"sentinel://shop:{APP_PASSWORD}@/31",
    )
    assert every_refusal(fleet, groups) == []


def test_a_password_not_url_encoded_is_refused_with_the_sentinel_form():
    password = "shop pass/with?#@;%-0123"
    fleet, groups = fleet_with_clients(
        common={"redis_acl_users": [{"name": "shop", "password": password}]},
        celery_app_broker_url=f"sentinel://shop:{password}@/0",
        flower_broker_url="",
        celery_app_result_backend="",
    )
    found = every_refusal(fleet, groups)
    assert len(found) == 1, found
    assert found[0].startswith(
        "celery_app_broker_url on w1 carries its password without URL-encoding: "
    )
    encoded = "sentinel://:{{ vault_redis_password | urlencode | replace('/', '%2F') }}@/DB"
    assert f"Write {encoded} (or USER:... for an ACL user;" in found[0]
    assert_no_secret(found, password)


def test_a_sentinel_url_with_a_control_character_is_refused_once():
    """The broker URL by this rule; the result backend by result_backend_errors alone."""
    url = f"sentinel://shop:{APP_PASSWORD}@/0\n"
    fleet, groups = fleet_with_clients(celery_app_broker_url=url, celery_app_result_backend=url)
    found = every_refusal(fleet, groups)
    assert [m.split(" holds ")[0] for m in found] == [
        "celery_app_result_backend on w1",
        "celery_app_broker_url on w1",
    ], found
    assert all(" holds a newline: no URL and no environment file carries one." in m for m in found)


def test_a_sentinel_scheme_in_capitals_is_refused():
    fleet, groups = fleet_with_clients(celery_app_broker_url=f"Sentinel://shop:{APP_PASSWORD}@/0")
    assert every_refusal(fleet, groups) == [
        "celery_app_broker_url on w1 writes its scheme as 'Sentinel': write sentinel:// in "
        "lowercase, the form the toolkit expands into one part per broker node."
    ]


@pytest.mark.parametrize("var", ["celery_app_broker_url", "flower_broker_url"])
@pytest.mark.parametrize("url", ["amqp://shop:pw@10.0.0.1//", "10.0.0.1:6379"])
def test_a_broker_url_of_another_scheme_is_refused(var, url):
    fleet, groups = fleet_with_clients(**{var: url})
    scheme = "'amqp'" if "://" in url else "'(none)'"
    assert every_refusal(fleet, groups) == [
        f"{var} on w1 uses the scheme {scheme}: the toolkit's broker is the replicated Redis it "
        "deploys on the broker group, reached through its sentinels as "
        "sentinel://USER:PASSWORD@/DB (sentinel://:PASSWORD@/DB for Redis's default user)."
    ]


@pytest.mark.parametrize("backend", ["django-db", "rpc://", "db+postgresql://u:p@db/app", ""])
def test_a_result_backend_that_is_not_redis_passes(backend):
    fleet, groups = fleet_with_clients(celery_app_result_backend=backend)
    assert every_refusal(fleet, groups) == []


def test_an_empty_flower_url_passes():
    """Flower then reads the app's URL, which the rule checks on the worker hosts."""
    fleet, groups = fleet_with_clients(flower_broker_url="")
    assert every_refusal(fleet, groups) == []


def test_a_flower_host_that_runs_no_worker_is_checked_for_its_own_url():
    fleet, _ = fleet_with_clients(flower_broker_url="redis://shop:pw@10.0.0.1:6379/0")
    found = refusals(fleet, NODES, flowers=["w1"], workers=[])
    assert [m.split(" names ")[0] for m in found] == ["flower_broker_url on w1"]


# --- rule 11 without a replicated broker: sentinel:// is refused ---------------------------------


def single_broker_refusal(var: str, count: int) -> str:
    return (
        f"{var} on w1 uses sentinel://, which is for a replicated broker (three or more hosts in "
        f"the group broker, which holds {count}): with one broker host write "
        "redis://USER:PASSWORD@HOST:PORT/DB (redis://:PASSWORD@HOST:PORT/DB for Redis's default "
        "user)."
    )


@pytest.mark.parametrize("var", URL_VARS)
def test_a_sentinel_url_with_a_single_broker_is_refused_once(var):
    """One refusal: broker_url_errors does not also name the scheme."""
    urls = {
        "celery_app_broker_url": f"redis://shop:{APP_PASSWORD}@10.0.0.1:6379/0",
        "flower_broker_url": "",
        "celery_app_result_backend": "",
        var: f"sentinel://shop:{APP_PASSWORD}@/0",
    }
    fleet, groups = fleet_with_clients(nodes=["b1"], **urls)
    assert every_refusal(fleet, groups) == [single_broker_refusal(var, 1)]


def test_the_redis_form_with_a_single_broker_passes_as_before():
    url = f"redis://shop:{APP_PASSWORD}@10.0.0.1:6379/0"
    fleet, groups = fleet_with_clients(
        nodes=["b1"],
        celery_app_broker_url=url,
        flower_broker_url=url,
        celery_app_result_backend=url,
    )
    assert every_refusal(fleet, groups) == []


def test_a_sentinel_url_without_a_broker_group_is_refused():
    fleet, groups = fleet_with_clients(nodes=[], flower_broker_url="", celery_app_result_backend="")
    assert every_refusal(fleet, groups) == [single_broker_refusal("celery_app_broker_url", 0)]


# --- where a worker host consumed from (celery_broker_endpoint, issue 21) ------------------------


def test_the_endpoint_of_the_host_less_sentinel_form():
    assert celery_broker_endpoint(SENTINEL_URL) == {"host": "sentinel", "port": 0, "db": 0}
    assert celery_broker_endpoint(f"sentinel://:{APP_PASSWORD}@/3")["db"] == 3


def test_the_endpoint_of_the_expanded_sentinel_form_names_each_sentinel_sorted():
    url = ";".join(
        f"sentinel://shop:{quote(APP_PASSWORD)}@{address}/2"
        for address in ("10.0.0.3:26379", "10.0.0.1:26380", "[fd00::2]:26379", "10.0.0.4")
    )
    endpoint = celery_broker_endpoint(url)
    assert endpoint == {
        "host": "sentinel:10.0.0.1:26380,10.0.0.3:26379,10.0.0.4:26379,[fd00::2]:26379",
        "port": 0,
        "db": 2,
    }
    assert "shop" not in str(endpoint) and APP_PASSWORD not in str(endpoint)


def test_the_endpoint_of_a_redis_url_is_unchanged():
    assert celery_broker_endpoint(f"redis://shop:{APP_PASSWORD}@10.0.0.1:6380/4") == {
        "host": "10.0.0.1",
        "port": 6380,
        "db": 4,
    }


PREFLIGHT_PLAY = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: celery_toolkit.stack.redis
        tasks_from: preflight
"""


@pytest.mark.parametrize("min_replicas", [0, 1])
def test_the_role_alone_refuses_a_single_broker_that_would_wait_for_replicas(
    tmp_path, min_replicas
):
    """The redis role run outside deploy.yml (whose validation refuses it first): its preflight
    on a single broker with redis_min_replicas_to_write above 0."""
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(PREFLIGHT_PLAY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    variables = {
        "redis_nodes": ["localhost"],
        "redis_min_replicas_to_write": min_replicas,
        "redis_password": "a-long-broker-password-0123",
        "ansible_facts": {"os_family": "Debian"},
        "ansible_python_interpreter": sys.executable,
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook)]
        + ["-e", json.dumps(variables)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    out = " ".join(proc.stdout.split())
    if min_replicas:
        assert proc.returncode != 0
        assert (
            "redis_min_replicas_to_write on localhost is 1: a broker without replicas would "
            "refuse every task" in out
        ), out[-2000:]
    else:
        assert proc.returncode == 0, out[-2000:]
