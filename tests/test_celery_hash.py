"""The keyed hash of the deploy mark and the restart token (plugins/filter/celery_hash.py)."""

import hashlib
import hmac

import pytest

from celery_hash import celery_keyed_hash

KEY = "k" * 64


def test_is_hmac_sha256_of_the_value():
    expected = hmac.new(KEY.encode(), b"secret-value", hashlib.sha256).hexdigest()
    assert celery_keyed_hash("secret-value", KEY) == expected


def test_is_not_the_plain_hash_of_the_value():
    digest = celery_keyed_hash("secret-value", KEY)
    assert digest not in {
        hashlib.sha1(b"secret-value").hexdigest(),
        hashlib.sha256(b"secret-value").hexdigest(),
    }


def test_another_key_or_value_gives_another_digest():
    digest = celery_keyed_hash("secret-value", KEY)
    assert celery_keyed_hash("secret-value", "j" * 64) != digest
    assert celery_keyed_hash("secret-valuf", KEY) != digest


@pytest.mark.parametrize("key", [None, "", "short", 1234])
def test_refuses_a_missing_or_short_key(key):
    with pytest.raises(Exception, match="__celery_app_hash_key"):
        celery_keyed_hash("secret-value", key)
