"""Tasks of the reference app; importing this package registers all of them."""

from __future__ import annotations

from refapp.tasks import background, heavy, ledger, notifications, probe

__all__ = ["background", "heavy", "ledger", "notifications", "probe"]
