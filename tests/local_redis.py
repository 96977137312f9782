"""This machine's redis-server for the tests that start their own (tests/test_celery_launch.py,
tests/test_sentinel_failover.py): where it is, and a free port for it."""

from __future__ import annotations

import random
import shutil
import socket
from pathlib import Path

import pytest


def redis_server() -> str:
    """The redis-server binary, or the test fails naming the package."""
    server = shutil.which("redis-server")
    if not server:
        pytest.fail("redis-server is missing: apt-get install redis-server; .ci/run does")
    return server


_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, for a server to bind, below the kernel's range of ports
    for outgoing connections: a port the kernel picks (bind to 0) is in that range, where any
    client connection of the machine (the other pytest worker's, Ansible's) may take it before
    the server binds it; a sentinel then never started (a fixture timed out once in a full run).
    Never the same port twice in a run of this process."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(10000, max(low, 10001))
        if port in _GIVEN:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    pytest.fail(f"no free port between 10000 and {low} in 200 tries")
