"""Secrets with shell syntax and symbols reach every process (supervisord's programs) byte
for byte, and nothing in them runs: the tests shared with the other process manager's
scenario (molecule/resources/exact_values.py)."""

from exact_values import *  # noqa: F403
