"""TLS between the VMs (plugins/filter/celery_tls.py): each rule's pass and fail path, redis-cli's
quoting, and two refusals as deploy.yml prints them before any host."""

from __future__ import annotations

import re

import pytest
from role_settings import settings

from celery_broker import broker_url_errors
from celery_tls import FilterModule, celery_broker_ca_path, celery_tls_errors

CA_TAIL = "?ssl_cert_reqs=required&ssl_ca_certs=/etc/refapp/broker-ca.pem"
URL = "rediss://refapp:app-secret-0123456789@10.0.0.10:6379/0" + CA_TAIL
GROUPS = {"broker": ["b"], "celery_workers": ["w"], "flower": ["w"]}


@pytest.fixture
def pem(tmp_path):
    for name in ("ca.pem", "b.pem", "b.key", "w.pem", "w.key"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    return tmp_path


def fleet(pem, broker=None, worker=None):
    """A TLS fleet that passes every rule, with some variables changed."""
    b = {
        "redis_bind_addresses": ["127.0.0.1", "10.0.0.10"],
        "redis_password": "admin-secret-0123456789",
        "redis_acl_users": [{"name": "refapp", "password": "app-secret-0123456789"}],
        "redis_tls_enabled": True,
        "redis_tls_cert_file": str(pem / "b.pem"),
        "redis_tls_key_file": str(pem / "b.key"),
        "redis_tls_ca_file": str(pem / "ca.pem"),
        **(broker or {}),
    }
    w = {
        "celery_app_broker_url": URL,
        "celery_app_broker_ca_file": str(pem / "ca.pem"),
        **(worker or {}),
    }
    return {"b": settings(**b), "w": settings(**w)}


def test_a_sound_tls_fleet_passes(pem):
    hostvars = fleet(pem)
    assert celery_tls_errors(GROUPS, hostvars) == []
    # the layout's own broker checks take rediss:// as they take redis://
    assert broker_url_errors(["w"], ["b"], hostvars) == []


def test_a_fleet_without_tls_passes_as_before(pem):
    hostvars = fleet(
        pem,
        broker={"redis_tls_enabled": False},
        worker={
            "celery_app_broker_url": "redis://refapp:app-secret-0123456789@10.0.0.10:6379/0",
            "celery_app_broker_ca_file": "",
        },
    )
    assert celery_tls_errors(GROUPS, hostvars) == []


def test_plain_redis_url_to_a_tls_broker_is_refused(pem):
    url = "redis://refapp:app-secret-0123456789@10.0.0.10:6379/0"
    errors = celery_tls_errors(GROUPS, fleet(pem, worker={"celery_app_broker_url": url}))
    assert errors == [
        "celery_app_broker_url on w uses redis://, but the broker speaks TLS only "
        f"(redis_tls_enabled): write it as rediss://USER:PASSWORD@HOST:PORT/DB{CA_TAIL}."
    ]
    assert "app-secret" not in errors[0]


def test_rediss_to_a_broker_without_tls_is_refused(pem):
    errors = celery_tls_errors(GROUPS, fleet(pem, broker={"redis_tls_enabled": False}))
    assert len(errors) == 1
    assert "uses rediss://, but the broker does not speak TLS" in errors[0]


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("", ["without ssl_cert_reqs=required", "does not name the CA"]),
        ("?ssl_cert_reqs=none&ssl_ca_certs=/etc/refapp/broker-ca.pem", ["without ssl_cert_reqs"]),
        ("?ssl_cert_reqs=required&ssl_ca_certs=/tmp/ca.pem", ["does not name the CA"]),
    ],
)
def test_rediss_that_would_not_verify_the_broker_is_refused(pem, tail, expected):
    url = "rediss://refapp:app-secret-0123456789@10.0.0.10:6379/0" + tail
    errors = celery_tls_errors(GROUPS, fleet(pem, worker={"celery_app_broker_url": url}))
    assert len(errors) == len(expected), errors
    for error, words in zip(errors, expected, strict=True):
        assert words in error
        assert CA_TAIL in error  # the fix, as the user writes it


def test_the_ca_follows_the_apps_config_dir(pem):
    worker = {"celery_app_config_dir": "/etc/celery/shop/", "celery_app_broker_url": URL}
    errors = celery_tls_errors(GROUPS, fleet(pem, worker=worker))
    assert "ssl_ca_certs=/etc/celery/shop/broker-ca.pem" in errors[0]
    assert celery_broker_ca_path("/etc/celery/shop/") == "/etc/celery/shop/broker-ca.pem"


def test_result_backend_follows_the_same_rules(pem):
    backend = URL.replace("/0?", "/1?").replace("rediss", "redis")
    errors = celery_tls_errors(GROUPS, fleet(pem, worker={"celery_app_result_backend": backend}))
    assert errors and errors[0].startswith("celery_app_result_backend on w uses redis://")


def test_rediss_without_the_ca_file_is_refused(pem):
    errors = celery_tls_errors(GROUPS, fleet(pem, worker={"celery_app_broker_ca_file": ""}))
    assert errors == [
        "celery_app_broker_ca_file on w is empty, but celery_app_broker_url uses rediss://: "
        "set it to the CA that signed the broker's certificate, a PEM file on the controller "
        "(the broker's redis_tls_ca_file)."
    ]


def test_tls_broker_without_its_files_is_refused(pem):
    errors = celery_tls_errors(
        GROUPS,
        fleet(pem, broker={"redis_tls_key_file": "", "redis_tls_ca_file": str(pem / "nope.pem")}),
    )
    assert errors == [
        "redis_tls_key_file on b is empty, but redis_tls_enabled is true: set it to a PEM file on "
        "the controller (for a test fleet, playbooks/tls_test_ca.yml makes one).",
        f"redis_tls_ca_file on b names {pem / 'nope.pem'}, which is not a file on the "
        "controller: fix the path (for a test fleet, run playbooks/tls_test_ca.yml first).",
    ]


@pytest.mark.parametrize("address", ["0.0.0.0", "10.0.0.21", "::", "flower.internal"])
def test_flower_beyond_loopback_without_tls_is_refused(pem, address):
    errors = celery_tls_errors(GROUPS, fleet(pem, worker={"flower_address": address}))
    assert len(errors) == 1
    assert errors[0].startswith(f"flower_address on w is {address}, beyond loopback, but Flower")
    assert "Set flower_tls_cert_file and flower_tls_key_file" in errors[0]


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "localhost", "127.0.1.1"])
def test_flower_on_loopback_needs_no_tls(pem, address):
    assert celery_tls_errors(GROUPS, fleet(pem, worker={"flower_address": address})) == []


def test_flower_beyond_loopback_with_tls_passes_and_needs_both_files(pem):
    worker = {"flower_address": "10.0.0.21", "flower_tls_cert_file": str(pem / "w.pem")}
    errors = celery_tls_errors(GROUPS, fleet(pem, worker=worker))
    assert errors == [
        "flower_tls_key_file on w is empty, but Flower's TLS needs both: set it to a PEM file on "
        "the controller (for a test fleet, playbooks/tls_test_ca.yml makes one)."
    ]
    worker["flower_tls_key_file"] = str(pem / "w.key")
    assert celery_tls_errors(GROUPS, fleet(pem, worker=worker)) == []


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {
        "celery_tls_errors",
        "celery_broker_ca_path",
    }


def test_messages_name_no_secret(pem):
    bad = fleet(pem, broker={"redis_tls_enabled": False})
    text = " ".join(celery_tls_errors(GROUPS, bad))
    assert not re.search(r"secret-0123456789", text)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"flower_address": "0.0.0.0"},
            "flower_address on vm1, vm2 and vm3 is 0.0.0.0, beyond loopback, but Flower has no TLS",
        ),
        (
            {
                "celery_app_broker_url": "rediss://:a-real-broker-secret-0123456789@10.0.0.1:6379/0"
                + CA_TAIL
            },
            "celery_app_broker_url on vm1, vm2 and vm3 uses rediss://, but the broker does not "
            "speak TLS",
        ),
    ],
    ids=["flower-beyond-loopback-without-tls", "rediss-to-a-broker-without-tls"],
)
def test_deploy_refuses_tls_mistakes_before_any_host(tmp_path, overrides, message):
    """The rules are wired into validate.yml: deploy.yml stops in its first play, saying why."""
    from test_bad_input import VALIDATION_PLAY, deploy, plays, write_inventory

    proc = deploy(write_inventory(tmp_path, overrides))
    out = re.sub(r"\s+", " ", proc.stdout + proc.stderr)
    assert proc.returncode != 0
    assert message in out, proc.stdout[-3000:]
    assert plays(proc.stdout) == [VALIDATION_PLAY]
    assert not re.search(r"changed=[1-9]", proc.stdout)
    assert "a-real-broker-secret" not in out
