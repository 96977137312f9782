"""Names that become host resources, and the broker URL against the broker the inventory
deploys: each rule's pass and fail path (plugins/filter/celery_names.py, celery_broker.py)."""

import pytest
from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import once
from role_settings import settings

from celery_broker import broker_url_errors, flower_port_errors
from celery_inventory import celery_inventory_errors
from celery_names import celery_app_name_errors


def app_name_errors(host, inventory):
    """The messages for one host whose inventory sets `inventory`."""
    return celery_app_name_errors(settings(**inventory), host)


PASSWORD = "a-real-broker-secret-0123456789"


@pytest.mark.parametrize("name", ["refapp", "shop", "shop-api", "a1_b", "x" * 32])
def test_app_names_usable_as_user_folder_and_unit_pass(name):
    assert app_name_errors("vm1", {"celery_app_name": name}) == []


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Shop", "celery_app_name on vm1 is 'Shop': it names the app's system user"),
        ("my shop", "must be lowercase letters, digits, '-' or '_'"),
        ("shop@1", "must be lowercase letters"),
        ("1shop", "starting with a letter"),
        ("x" * 33, "at most 32 characters"),
        ("redis", "celery_app_name on vm1 is 'redis', an account the system (or the broker)"),
        ("root", "an account the system"),
    ],
)
def test_app_names_that_break_a_host_are_refused(name, message):
    errors = app_name_errors("vm1", {"celery_app_name": name})
    assert len(errors) == 1, errors
    assert message in errors[0]


def test_the_user_is_checked_on_its_own():
    errors = app_name_errors("vm1", {"celery_app_name": "shop", "celery_app_user": "root"})
    assert errors == [
        "celery_app_user on vm1 is 'root', an account the system (or the broker) already has: "
        "the app runs as its own unprivileged user. Choose another user (e.g. 'shop')."
    ]


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"celery_app_base_dir": "opt/shop"}, "celery_app_base_dir on vm1 is 'opt/shop': it must"),
        ({"celery_app_base_dir": "/opt/my shop"}, "no spaces"),
        ({"celery_app_base_dir": "/opt/shop/"}, "no trailing '/'"),
        ({"celery_app_base_dir": "/opt/../etc"}, "no '..'"),
        (
            {"celery_app_base_dir": "/opt"},
            "celery_app_base_dir on vm1 is /opt, a folder the system",
        ),
        ({"celery_app_base_dir": "/usr/local"}, "old releases deleted"),
        ({"celery_app_config_dir": "/etc"}, "celery_app_config_dir on vm1 is /etc, a folder the"),
        ({"celery_app_base_dir": "/tmp/shop"}, "emptied at boot"),
        ({"celery_app_config_dir": "/run/shop"}, "emptied at boot"),
        (
            {"celery_app_base_dir": "/srv/shop", "celery_app_config_dir": "/srv/shop/etc"},
            "celery_app_base_dir and celery_app_config_dir on vm1 are /srv/shop and /srv/shop/etc: "
            "they must be two separate folders",
        ),
    ],
)
def test_folders_the_app_cannot_own_are_refused(variables, message):
    errors = app_name_errors("vm1", {"celery_app_name": "shop", **variables})
    assert len(errors) == 1, errors
    assert message in errors[0]


def test_own_folders_pass():
    assert (
        app_name_errors(
            "vm1",
            {
                "celery_app_name": "shop",
                "celery_app_base_dir": "/srv/shop",
                "celery_app_config_dir": "/etc/shop-celery",
            },
        )
        == []
    )


def fleet(url, **broker):
    """vm1 runs Redis (and workers), vm2 runs workers only."""
    hostvars = {
        "vm1": {
            "redis_password": PASSWORD,
            "redis_default_user_enabled": True,
            "celery_app_broker_url": url,
            # issue 20: the Redis exporter (on by default) logs in as a user of its own
            "redis_exporter_password": "a-real-exporter-secret-0123",
            **broker,
        },
        "vm2": {"celery_app_broker_url": url},
    }
    return {host: settings(**hv) for host, hv in hostvars.items()}


def check(url, workers=("vm1",), **broker):
    return once(broker_url_errors(list(workers), ["vm1"], fleet(url, **broker)))


def test_the_sandbox_url_on_the_broker_host_passes():
    assert check(f"redis://:{PASSWORD}@127.0.0.1:6379/0") == []
    assert check(f"redis://:{PASSWORD}@localhost/0") == []


def test_a_url_encoded_password_is_decoded():
    secret = "p@ss/word:with#signs-0123"
    assert (
        check("redis://:p%40ss%2Fword%3Awith%23signs-0123@127.0.0.1:6379/0", redis_password=secret)
        == []
    )


def test_the_wrong_password_is_refused_without_printing_it():
    errors = check("redis://:another-password-000000@127.0.0.1:6379/0")
    assert len(errors) == 1
    assert (
        "authenticates as Redis's default user with a password that is not redis_password "
        "of vm1" in errors[0]
    )
    assert "another-password" not in errors[0] and PASSWORD not in errors[0]


def test_a_password_without_its_colon_is_explained():
    errors = check(f"redis://{PASSWORD}@127.0.0.1:6379/0")
    assert len(errors) == 1
    assert "no ':' in front of it, so Redis would read it as a user name" in errors[0]
    assert PASSWORD not in errors[0]


def test_loopback_from_a_host_without_redis_is_refused():
    errors = check(f"redis://:{PASSWORD}@127.0.0.1:6379/0", workers=("vm1", "vm2"))
    assert errors == [
        "celery_app_broker_url on vm2 points at 127.0.0.1, the host itself, which runs no Redis "
        "(it is not in the broker group): use an address a broker host listens on "
        "(vm1: 127.0.0.1, ::1)."
    ]


def test_an_address_redis_does_not_listen_on_is_refused():
    errors = check(f"redis://:{PASSWORD}@10.0.0.5:6379/0", workers=("vm2",))
    assert errors == [
        "celery_app_broker_url on vm2 points at 10.0.0.5, where no broker host listens "
        "(redis_bind_addresses: vm1: 127.0.0.1, ::1): put one of those addresses in the URL, or "
        "add 10.0.0.5 to the broker's redis_bind_addresses."
    ]
    assert (
        check(
            f"redis://:{PASSWORD}@10.0.0.5:6379/0",
            workers=("vm2",),
            redis_bind_addresses=["127.0.0.1", "10.0.0.5"],
        )
        == []
    )


def test_a_host_name_reaches_a_broker_listening_everywhere():
    url = f"redis://:{PASSWORD}@vm1:6379/0"
    assert check(url, workers=("vm2",), redis_bind_addresses=["0.0.0.0"]) == []
    assert len(check(url, workers=("vm2",))) == 1


def test_the_wrong_port_and_database_are_refused():
    errors = check(f"redis://:{PASSWORD}@127.0.0.1:6380/16")
    assert errors == [
        "celery_app_broker_url on vm1 uses port 6380, but Redis on vm1 listens on redis_port "
        "6379: use 6379 in the URL.",
        "celery_app_broker_url on vm1 names the database '16', but Redis on vm1 has databases 0 "
        "to 15 (redis_databases): end the URL with /0 (or another of those).",
    ]
    assert check(f"redis://:{PASSWORD}@127.0.0.1:6380/3", redis_port=6380) == []


def test_an_acl_user_must_exist_with_that_password():
    users = [{"name": "shop", "password": "shop-broker-secret-123456", "rules": "~* +@all"}]
    assert check("redis://shop:shop-broker-secret-123456@127.0.0.1/0", redis_acl_users=users) == []
    unknown = check("redis://shopp:shop-broker-secret-123456@127.0.0.1/0", redis_acl_users=users)
    assert unknown == [
        "celery_app_broker_url on vm1 authenticates as the Redis user 'shopp', which is not in "
        "redis_acl_users of vm1 (users: shop): add it there, or use redis://:PASSWORD@... with "
        "redis_password for the default user."
    ]
    wrong = check("redis://shop:not-the-one-0000000000@127.0.0.1/0", redis_acl_users=users)
    assert (
        len(wrong) == 1 and "with a password that is not the one redis_acl_users gives" in wrong[0]
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("amqp://guest:guest@127.0.0.1//", "uses the scheme 'amqp': the toolkit's broker is"),
        ("127.0.0.1:6379", "uses the scheme"),
        ("redis://:x@127.0.0.1:port/0", "is not a URL the broker client can read"),
    ],
)
def test_urls_that_are_not_the_toolkits_redis_are_refused(url, message):
    errors = check(url)
    assert len(errors) == 1 and message in errors[0], errors


def test_a_broker_the_inventory_does_not_manage_is_not_second_guessed():
    assert check("redis://:x@redis.internal:6380/4", workers=()) == []
    assert broker_url_errors(["vm1"], [], fleet("redis://:x@redis.internal:6380/4")) == []


def test_the_ansible_entry_point_runs_the_new_rules():
    hostvars = fleet(f"redis://:{PASSWORD}@10.9.9.9:6379/0")
    hostvars["vm1"].update(
        celery_app_name="Shop",
        flower_basic_auth_user="ops",
        flower_basic_auth_password="a-real-flower-secret-42",
    )
    errors = celery_inventory_errors(
        {"broker": ["vm1"], "celery_workers": ["vm1"], "flower": ["vm1"]}, hostvars
    )
    assert [e.split(" on vm1")[0] for e in errors] == ["celery_app_name", "celery_app_broker_url"]


def test_values_of_the_wrong_type_are_left_to_the_argument_spec_not_a_crash():
    hostvars = fleet(f"redis://:{PASSWORD}@127.0.0.1:6379/0", redis_databases="many")
    hostvars["vm1"].update(redis_port="six", flower_port="five")
    assert broker_url_errors(["vm1"], ["vm1"], hostvars) == []
    assert flower_port_errors(["vm1"], ["vm1"], hostvars) == []


def test_flower_cannot_take_the_port_redis_listens_on_on_its_host():
    hostvars = fleet(f"redis://:{PASSWORD}@127.0.0.1:6379/0")
    hostvars["vm1"]["flower_port"] = 6379
    assert once(flower_port_errors(["vm1"], ["vm1"], hostvars)) == [
        "flower_port on vm1 is 6379, the port Redis listens on there (redis_port): Flower could "
        "not start. Give Flower another port (5555 is its own)."
    ]
    # another host, or another port: no conflict
    hostvars["vm2"]["flower_port"] = 6379
    assert flower_port_errors(["vm2"], ["vm1"], hostvars) == []
    hostvars["vm1"]["redis_port"] = 6380
    assert flower_port_errors(["vm1"], ["vm1"], hostvars) == []


@pytest.mark.parametrize("name", ["systemd", "user", "getty", "apt", "dbus"])
def test_app_name_whose_units_prefix_system_units_is_refused(name):
    errors = app_name_errors("vm1", {"celery_app_name": name})
    assert any(
        e.startswith(f"celery_app_name on vm1 is {name!r}: the app's hardening drop-in")
        for e in errors
    ), errors


def test_the_default_user_is_refused_when_the_broker_keeps_it_off():
    """`default` is off unless redis_default_user_enabled: a URL without a user (or `default`)
    could never log in, and the refusal says which user to log in as instead."""
    errors = check(f"redis://:{PASSWORD}@127.0.0.1:6379/0", redis_default_user_enabled=False)
    assert len(errors) == 1
    assert "logs in as Redis's default user, which is off on vm1" in errors[0]
    assert "redis_acl_users" in errors[0] and PASSWORD not in errors[0]
    acl = [{"name": "refapp", "password": PASSWORD}]
    url = f"redis://refapp:{PASSWORD}@127.0.0.1:6379/0"
    assert check(url, redis_default_user_enabled=False, redis_acl_users=acl) == []


def test_during_a_rotation_the_url_may_hold_the_previous_password_or_the_new_one():
    """README "Rotating the broker password": Redis accepts both passwords until the previous
    one is removed, so the URL may carry either; any third is refused, without printing it."""
    users = [
        {
            "name": "shop",
            "password": "shop-broker-new-secret-1234",
            "previous_password": "shop-broker-old-secret-1234",
        }
    ]
    for password in ("shop-broker-new-secret-1234", "shop-broker-old-secret-1234"):
        url = f"redis://shop:{password}@127.0.0.1/0"
        assert check(url, redis_acl_users=users) == []
    wrong = check("redis://shop:shop-broker-third-secret-1@127.0.0.1/0", redis_acl_users=users)
    assert len(wrong) == 1 and "(nor its previous_password)" in wrong[0]
    assert "third" not in wrong[0]
    old = "the-previous-admin-password-01"
    assert check(f"redis://:{old}@127.0.0.1/0", redis_password_previous=old) == []
    assert len(check(f"redis://:{old}@127.0.0.1/0")) == 1
