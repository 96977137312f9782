"""This machine's redis-server for the tests that start their own (tests/test_celery_launch.py,
tests/test_sentinel_failover.py): where it is, and a free port for it."""

from __future__ import annotations

import shutil
import socket

import pytest


def redis_server() -> str:
    """The redis-server binary, or the test fails naming the package."""
    server = shutil.which("redis-server")
    if not server:
        pytest.fail("redis-server is missing: apt-get install redis-server; .ci/run does")
    return server


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick, released for the server to bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
