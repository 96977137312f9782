"""Every secret accepted byte for byte or refused before any host (plugins/filter/celery_secrets.py:
celery_app_environment's names and values, the Redis and Flower credentials' characters and the
password as the broker URL carries it. Each rule's pass and fail path; no message holds a secret.
"""

import re
import string
from pathlib import Path
from urllib.parse import quote

import pytest
from role_settings import settings

from celery_inventory import celery_inventory_errors
from celery_secrets import TOOLKIT_ENV, celery_credential_errors, celery_environment_errors

ROOT = Path(__file__).resolve().parent.parent
# Django's get_random_secret_key() alphabet, plus a space, both quotes, a backslash and '#'
DJANGO = string.ascii_lowercase + string.digits + "!@#$%^&*(-_=+)"
SECRET = DJANGO + " '\"\\#`"
BROKER_PASSWORD = "a-real-broker-secret-0123456789"


def inventory(hosts=("vm1", "vm2", "vm3"), **overrides):
    """Three worker hosts sharing group_vars (vm1 also the broker and Flower), sound by default;
    `overrides` apply to every host, as group_vars/all would."""
    common = {
        "redis_password": BROKER_PASSWORD,
        # these inventories log in as `default`, which a broker must enable (it is off by default)
        "redis_default_user_enabled": True,
        "redis_bind_addresses": ["127.0.0.1", "10.0.0.1"],
        "celery_app_broker_url": f"redis://:{BROKER_PASSWORD}@10.0.0.1:6379/0",
        "flower_basic_auth_user": "ops",
        "flower_basic_auth_password": "a-real-flower-secret-42",
        "celery_app_environment": {},
        # issue 20: the Redis exporter (on by default) logs in as a user of its own
        "redis_exporter_password": "a-real-exporter-secret-0123",
        **overrides,
    }
    hostvars = {h: settings(**common, ansible_host=h) for h in hosts}
    groups = {"broker": ["vm1"], "celery_workers": list(hosts), "flower": list(hosts)}
    return celery_inventory_errors(groups, hostvars)


def test_a_sound_inventory_with_secrets_of_every_printable_character_passes():
    """The happy path: a Django-alphabet secret with space, quotes, '#', '$' and a backslash in
    the environment, the Redis password and an ACL user's password (the URL carrying it
    percent-encoded), and Flower's password."""
    acl = [{"name": "shop", "password": SECRET, "rules": "~* &* +@all"}]
    assert (
        inventory(
            redis_password=SECRET,
            redis_acl_users=acl,
            celery_app_broker_url=f"redis://shop:{quote(SECRET, safe='')}@10.0.0.1:6379/0",
            flower_basic_auth_password=SECRET,
            celery_app_environment={"SECRET_KEY": SECRET, "DEBUG": False, "WORKERS": 4},
        )
        == []
    )


@pytest.mark.parametrize("name", ["A", "_", "SECRET_KEY", "django_settings_module", "A1_"])
def test_environment_variable_names_pass(name):
    assert celery_environment_errors({name: "x"}, "vm1") == []


@pytest.mark.parametrize(
    ("name", "fix"),
    [("PA-MODE", "PA_MODE"), ("1ST", "_1ST"), ("A B", "A_B"), ("A=B", "A_B"), ("", "")],
)
def test_a_name_that_is_not_an_environment_variable_name_is_refused_with_a_fix(name, fix):
    assert celery_environment_errors({name: "x"}, "vm1") == [
        f"celery_app_environment on vm1: {name!r} is not an environment variable name (letters, "
        "digits and '_', not starting with a digit): no environment file can carry it and the "
        f"app could not read it. Rename it, e.g. {fix!r}."
    ]


@pytest.mark.parametrize(
    ("char", "said"),
    [
        ("\n", "a newline"),
        ("\x00", "a NUL"),
        ("\r", "a carriage return"),
        ("\t", "a tab"),
        ("\x1b", "a control character (U+001B)"),
        ("\x7f", "a control character (U+007F)"),
        ("\u2028", "a control character (U+2028)"),
    ],
)
def test_a_value_with_a_control_character_is_refused_without_printing_it(char, said):
    errors = celery_environment_errors({"SECRET_KEY": f"s3cr3t{char}tail"}, "vm1")
    assert errors == [
        f"celery_app_environment on vm1: the value of SECRET_KEY holds {said}, which an "
        "environment file (systemd's EnvironmentFile=, the toolkit's reader) cannot carry: "
        "remove it. Give a multi-line value (a key, a certificate) base64-encoded, or as a file "
        "the app reads."
    ]
    assert "s3cr3t" not in errors[0] and "tail" not in errors[0]


@pytest.mark.parametrize(("value", "kind"), [(None, "empty (null)"), ([1], "a list")])
def test_a_value_that_is_not_one_string_is_refused(value, kind):
    assert celery_environment_errors({"X": value}, "vm1") == [
        f"celery_app_environment on vm1: the value of X is {kind}: an environment variable "
        "holds one string. Write a string (quoted in YAML, '' for empty), a number or true/false."
    ]


@pytest.mark.parametrize("value", ["", 0, 4.5, True, False, SECRET, "é ünïcode"])
def test_strings_numbers_and_booleans_are_values(value):
    assert celery_environment_errors({"X": value}, "vm1") == []


def test_a_name_the_toolkit_sets_is_refused_naming_the_variable_to_set():
    assert celery_environment_errors({"CELERY_BROKER_URL": "redis://x"}, "vm1") == [
        "celery_app_environment on vm1 sets CELERY_BROKER_URL, which the toolkit sets itself "
        "(from celery_app_broker_url): remove it from celery_app_environment and set "
        "celery_app_broker_url."
    ]
    for name in ("PATH", "CELERY_APP_RELEASE", "FLOWER_BASIC_AUTH", "CELERY_TOOLKIT_ENV_FILE"):
        errors = celery_environment_errors({name: "x"}, "vm1")
        assert len(errors) == 1 and f"sets {name}, which the toolkit sets itself" in errors[0]


def test_every_name_the_environment_templates_write_is_one_the_toolkit_keeps():
    """The list of the toolkit's own names follows the templates that write them."""
    templates = [
        ROOT / "roles/celery_app/templates/etc/app.env.j2",
        ROOT / "roles/flower/templates/etc/app/flower.env.j2",
    ]
    written = {
        name
        for template in templates
        for name in re.findall(r"^([A-Z][A-Z0-9_]*)=", template.read_text(), flags=re.M)
    }
    assert written and written <= set(TOOLKIT_ENV)


def test_the_environment_is_checked_on_every_worker_and_said_once():
    errors = inventory(celery_app_environment={"PA-MODE": "x", "KEY": "a\nb"})
    assert [e.split(":")[0] for e in errors] == [
        "celery_app_environment on vm1, vm2 and vm3",
        "celery_app_environment on vm1, vm2 and vm3",
    ]


def test_many_hosts_are_counted_not_listed():
    hosts = [f"vm{i}" for i in range(1, 8)]
    errors = inventory(hosts=hosts, celery_app_environment={"PA-MODE": "x"})
    assert errors[0].startswith("celery_app_environment on vm1, vm2, vm3 and 4 more hosts: ")


@pytest.mark.parametrize(
    ("char", "said"), [("\n", "a newline"), ("\x00", "a NUL"), ("\t", "a tab")]
)
def test_a_redis_password_redis_config_cannot_hold_is_refused(char, said):
    password = f"a-real-broker{char}secret-0123456789"
    errors = inventory(
        redis_password=password,
        celery_app_broker_url=f"redis://:{quote(password, safe='')}@10.0.0.1:6379/0",
    )
    assert errors == [
        f"redis_password on vm1 holds {said}: Redis's configuration ends a directive at a "
        "newline and the whole file at a NUL, so the password would be cut short or add a "
        "configuration line of its own; no control character is accepted. Choose a password "
        "without one (any printable character is fine, space, quotes, '#' and '$' included)."
    ]


def test_an_acl_users_name_and_password_are_checked():
    users = [
        {"name": "shop", "password": "one\nline"},
        {"name": "shop api", "password": "fine-password-0123"},
    ]
    errors = celery_credential_errors({"redis_acl_users": users}, "vm1")
    assert errors == [
        "redis_acl_users on vm1: the password of user 'shop' holds a newline: Redis's "
        "configuration ends a directive at a newline and the whole file at a NUL; no control "
        "character is accepted. Choose a password without one (any printable character is "
        "fine, space, quotes, '#' and '$' included).",
        "redis_acl_users on vm1: the user name 'shop api' is not a plain word: use letters, "
        "digits, '.', '_' and '-' (it is a word of Redis's configuration and the user part of "
        "celery_app_broker_url).",
    ]
    good = [{"name": "shop-app.v2", "password": SECRET}]
    assert celery_credential_errors({"redis_acl_users": good}, "vm1") == []


@pytest.mark.parametrize("name", ["default", "admin"])
def test_an_acl_user_cannot_take_the_name_of_default_or_the_administrator(name):
    users = [{"name": name, "password": "fine-password-0123"}]
    errors = celery_credential_errors(
        {"redis_acl_users": users, "redis_admin_user": "admin"}, "vm1"
    )
    assert errors == [
        f"redis_acl_users on vm1 names the user {name!r}: `default` is set by "
        "redis_default_user_enabled and admin (redis_admin_user) by redis_password. Give the app "
        "and Flower users of their own."
    ]


def test_secrets_are_set_long_enough_and_not_samples_outside_the_sandbox():
    """The rule roles' preflights call (redis, flower, celery_app) as validate.yml does."""
    assert celery_credential_errors({"redis_password": "short"}, "vm1") == [
        "redis_password on vm1 is too short: set it (at least 16 characters) in the inventory, "
        "encrypted with ansible-vault."
    ]
    sample = {"flower_basic_auth_password": "sandbox-flower-password"}
    assert celery_credential_errors(sample, "vm1") == [
        "flower_basic_auth_password on vm1 still holds a sample value: replace it with a real "
        "secret (and ansible-vault encrypt the file it lives in)."
    ]
    assert celery_credential_errors({**sample, "celery_toolkit_sandbox": True}, "vm1") == []


def test_a_comma_in_flowers_password_is_refused_once_for_three_hosts():
    errors = inventory(flower_basic_auth_password="a-real,flower-secret-42")
    assert errors == [
        "flower_basic_auth_password on vm1, vm2 and vm3 holds ',': Flower reads "
        "FLOWER_BASIC_AUTH as a comma-separated list of user:password pairs, so the password "
        "would be split into two credentials, one of them a fragment. Choose a password "
        "without ','."
    ]


@pytest.mark.parametrize(
    ("user", "said"),
    [
        ("ops,dev", "holds ','"),
        ("ops:dev", "holds ':', which HTTP Basic auth (RFC 7617) does not allow in a user"),
        ("ops dev", "holds a space"),
        ("ops\n", "holds a newline"),
    ],
)
def test_flowers_user_is_one_word_without_comma_or_colon(user, said):
    errors = celery_credential_errors({"flower_basic_auth_user": user}, "vm1")
    assert len(errors) == 1 and errors[0].startswith(f"flower_basic_auth_user on vm1 {said}")


def test_flowers_password_may_hold_a_colon_space_and_quotes():
    hv = {"flower_basic_auth_user": "ops", "flower_basic_auth_password": "p:a s'\"$#-long-enough"}
    assert celery_credential_errors(hv, "vm1") == []


ENCODE = "{{ vault_redis_password | urlencode | replace('/', '%2F') }}"
UNENCODED = (
    "celery_app_broker_url on vm1, vm2 and vm3 carries its password without URL-encoding: "
    "written as it is, a password ends the URL's parts at '/', '?', '#', '@', ';' or a space, "
    f"and its '%' starts an escape. Write redis://:{ENCODE}@HOST:PORT/DB (or USER:... for an "
    "ACL user; Jinja's urlencode leaves '/' as it is)."
)


@pytest.mark.parametrize("char", ["/", "?", "#", "@", ";", " ", "%", "%41"])
def test_a_password_written_into_the_url_unencoded_is_refused_with_the_jinja_to_write(char):
    password = f"broker-secret{char}0123456789"
    errors = inventory(
        redis_password=password, celery_app_broker_url=f"redis://:{password}@10.0.0.1:6379/0"
    )
    assert errors == [UNENCODED]
    assert password not in errors[0]


@pytest.mark.parametrize("char", ["/", "?", "#", "@", ";", " ", "%", "%41", "'", "$"])
def test_the_url_decoded_password_is_compared(char):
    """What kombu does (unquote): the percent-encoded password is the password."""
    password = f"broker-secret{char}0123456789"
    for encoded in (quote(password, safe=""), quote(password, safe="/").replace("/", "%2F")):
        url = f"redis://:{encoded}@10.0.0.1:6379/0"
        assert inventory(redis_password=password, celery_app_broker_url=url) == []


def test_an_unencoded_password_of_an_acl_user_is_refused_too():
    users = [{"name": "shop", "password": "shop/secret-0123456789"}]
    errors = inventory(
        redis_acl_users=users,
        celery_app_broker_url="redis://shop:shop/secret-0123456789@10.0.0.1:6379/0",
    )
    assert errors == [UNENCODED]


def test_a_control_character_in_the_broker_url_is_refused():
    errors = inventory(celery_app_broker_url=f"redis://:{BROKER_PASSWORD}@10.0.0.1:6379/0\n")
    assert errors == [
        "celery_app_broker_url on vm1, vm2 and vm3 holds a newline: no URL and no environment "
        f"file carries one. Remove it (a password goes into the URL percent-encoded: {ENCODE})."
    ]


def test_a_control_character_in_the_result_backend_is_refused():
    """CELERY_RESULT_BACKEND is a line of the same environment file."""
    backend = f"redis://:{BROKER_PASSWORD}@10.0.0.1:6379/1"
    assert inventory(celery_app_result_backend=backend) == []
    errors = inventory(celery_app_result_backend=backend + "\rX=1")
    assert errors == [
        "celery_app_result_backend on vm1, vm2 and vm3 holds a carriage return: no URL and no "
        "environment file carries one. Remove it (a password goes into the URL percent-encoded: "
        f"{ENCODE})."
    ]


def test_a_wrong_password_names_the_jinja_that_encodes_every_character():
    errors = inventory(celery_app_broker_url="redis://:another-secret-0123456789@10.0.0.1/0")
    assert errors == [
        "celery_app_broker_url on vm1, vm2 and vm3 authenticates as Redis's default user with "
        "a password that is not redis_password of vm1: write the URL as "
        f"redis://:{ENCODE}@HOST:PORT/DB, or as a user of redis_acl_users."
    ]


def test_no_message_holds_a_secret():
    secret = "s3cr3t-\n-/-,-value-0123456789"
    errors = inventory(
        redis_password=secret,
        redis_acl_users=[{"name": "shop", "password": secret}],
        celery_app_broker_url=f"redis://:{secret}@10.0.0.1:6379/0",
        flower_basic_auth_password=secret,
        celery_app_environment={"SECRET_KEY": secret},
    )
    assert len(errors) >= 5
    assert not any("s3cr3t" in e or "value-0123" in e for e in errors), errors


@pytest.mark.parametrize(
    ("users", "previous", "said"),
    [
        (
            [],
            BROKER_PASSWORD,
            "redis_password_previous on vm1: it is redis_password itself: nothing is rotated. "
            'Remove it once the fleet has the new password (README "Rotating the broker '
            'password").',
        ),
        (
            [],
            "old\npassword-0123456",
            "redis_password_previous on vm1: it holds a newline: Redis's configuration ends a "
            "directive at a newline and the whole file at a NUL; no control character is "
            "accepted.",
        ),
        (
            [{"name": "shop", "password": "", "previous_password": "shop-old-secret-0123"}],
            "",
            "redis_acl_users on vm1: the previous_password of user 'shop' is set without its "
            "password: a previous password is only accepted next to the new one. Set its "
            "password, or remove the previous one.",
        ),
        (
            [{"name": "shop", "password": "shop-secret-01", "previous_password": "shop-secret-01"}],
            "",
            "redis_acl_users on vm1: the previous_password of user 'shop' is its password itself: "
            "nothing is rotated. Remove it once the fleet has the new password (README "
            '"Rotating the broker password").',
        ),
    ],
)
def test_a_previous_password_is_refused_unless_it_rotates_to_a_new_one(users, previous, said):
    errors = celery_credential_errors(
        {
            "redis_password": BROKER_PASSWORD,
            "redis_password_previous": previous,
            "redis_acl_users": users,
        },
        "vm1",
    )
    assert errors == [said]
    assert "shop-secret-01" not in said and BROKER_PASSWORD not in said


def test_a_rotation_in_progress_passes():
    users = [{"name": "shop", "password": "shop-new-secret-01", "previous_password": "shop-old-1"}]
    assert (
        celery_credential_errors(
            {
                "redis_password": BROKER_PASSWORD,
                "redis_password_previous": "the-previous-admin-password",
                "redis_acl_users": users,
            },
            "vm1",
        )
        == []
    )
