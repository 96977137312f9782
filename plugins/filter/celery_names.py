"""Names and paths: celery_app_name (and the user and group it defaults) becomes a system user,
folders and systemd unit names; the base and config folders become the app's own. Checked before
any host is changed (playbooks/validate.yml) and by roles/celery_app's preflight.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from typing import Any

from ansible_collections.celery_toolkit.stack.plugins.plugin_utils.celery_common import (
    NAME,
    NAME_RULE,
    Refusal,
    once,
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Accounts a Debian host already has (or that the toolkit's other services use): the app must
# run as its own unprivileged user, and its folders and units must not take over theirs.
RESERVED_ACCOUNTS = _words(
    "root daemon bin sys sync games man lp mail news uucp proxy www-data backup list irc "
    "gnats nobody nogroup adm sudo staff users disk shadow utmp tty kmem dialout cdrom floppy "
    "audio video plugdev netdev operator src voice tape input sgx kvm render crontab "
    "messagebus sshd _apt systemd-journal systemd-network systemd-resolve systemd-timesync "
    "redis docker"
)
# systemd applies the app's hardening drop-in (<name>-.service.d/) to every unit whose name
# starts with "<name>-": these names would harden (and break) units of the system.
SYSTEM_UNIT_PREFIXES = _words(
    "systemd user getty serial-getty console-getty container-getty apt dpkg dbus ssh cron "
    "e2scrub fstrim logrotate man-db polkit network networking ifup wpa rsyslog supervisor "
    "redis docker containerd emergency rescue kmod modprobe initrd quotaon rc sys dev run "
    "user-runtime-dir setvtrgb keyboard console"
)
# Folders the system owns: the toolkit makes its base and config folders its own (owner, mode)
# and deletes old releases in the base folder.
SYSTEM_FOLDERS = _words(
    "/bin /boot /dev /etc /home /lib /lib64 /media /mnt /opt /proc /root /run /sbin /srv /sys "
    "/tmp /usr /var /usr/bin /usr/include /usr/lib /usr/lib64 /usr/libexec /usr/local "
    "/usr/local/bin /usr/local/lib /usr/local/sbin /usr/local/share /usr/sbin /usr/share "
    "/usr/src /var/backups /var/cache /var/lib /var/local /var/log /var/mail /var/opt "
    "/var/spool /var/tmp /var/www /etc/apt /etc/default /etc/init.d /etc/pam.d /etc/redis "
    "/etc/security /etc/ssh /etc/ssl /etc/sudoers.d /etc/systemd /etc/cron.d /etc/logrotate.d"
)
VOLATILE_FOLDERS = ("/dev", "/proc", "/run", "/sys", "/tmp", "/var/tmp")
SAFE_PATH = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
ACCOUNTS = ("celery_app_name", "celery_app_user", "celery_app_group")
FOLDERS = {"celery_app_base_dir": "/opt/<app>", "celery_app_config_dir": "/etc/<app>"}


def _account_problem(var: str, value: str) -> str:
    """Why `value` cannot be the app's name, user or group ("" when it can)."""
    what = "name" if var == "celery_app_name" else var.rsplit("_", 1)[1]
    if not NAME.match(value):
        names = (
            "the app's system user, /opt/<name>, /etc/<name> and its systemd units "
            "(<name>-worker@.service)"
            if var == "celery_app_name"
            else f"a system {what}"
        )
        return f" is {value!r}: it names {names}, so it must be {NAME_RULE} (e.g. 'shop')."
    if value in RESERVED_ACCOUNTS:
        return (
            f" is {value!r}, an account the system (or the broker) already has: the app runs as "
            f"its own unprivileged user. Choose another {what} (e.g. 'shop')."
        )
    if var == "celery_app_name" and value in SYSTEM_UNIT_PREFIXES:
        return (
            f" is {value!r}: the app's hardening drop-in ({value}-.service.d) applies to every "
            f"unit whose name starts with '{value}-', and units of the system do. Choose a name "
            "of the app's own (e.g. 'shop')."
        )
    return ""


def _folder_problem(var: str, path: str) -> str:
    example = FOLDERS[var]
    if not SAFE_PATH.match(path) or posixpath.normpath(path) != path or "/../" in path + "/":
        return (
            f" is {path!r}: it must be an absolute path of letters, digits, '.', '_' and '-' "
            f"(no spaces, no '..', no trailing '/'), e.g. {example}."
        )
    if path in SYSTEM_FOLDERS:
        deleted = ", old releases deleted" if var == "celery_app_base_dir" else ""
        return (
            f" is {path}, a folder the system owns: the toolkit makes it the app's own (owner, "
            f"mode{deleted}). Use a folder of the app's own, e.g. {example}."
        )
    if path.startswith(tuple(f + "/" for f in VOLATILE_FOLDERS)):
        return (
            f" is {path}, on a file system that is emptied at boot or belongs to the kernel: use "
            f"a persistent folder, e.g. {example}."
        )
    return ""


def app_name_errors(host: str, settings: Mapping[str, Any]) -> list[Refusal]:
    """The app's name, user, group and folders on one host (`settings`: the role celery's
    variables as the host sees them)."""
    found: list[Refusal] = []
    name = str(settings["celery_app_name"])
    for var in ACCOUNTS:
        value = str(settings[var])
        if var != "celery_app_name" and value == name:
            continue  # the default: reported once, for celery_app_name
        if problem := _account_problem(var, value):
            found.append((var, host, problem))
    name_refused = bool(found) and found[0][0] == "celery_app_name"
    for var in FOLDERS:
        path = str(settings[var])
        if name_refused and name in path:
            continue  # derived from the name, which is already refused
        if problem := _folder_problem(var, path):
            found.append((var, host, problem))
    base, config = (str(settings[var]) for var in FOLDERS)
    if base == config or base.startswith(config + "/") or config.startswith(base + "/"):
        found.append(
            (
                "celery_app_base_dir and celery_app_config_dir",
                host,
                f" are {base} and {config}: they must be two separate folders, neither inside "
                "the other: releases are replaced and deleted in the first, the secrets live in "
                "the second.",
            )
        )
    return found


def celery_app_name_errors(settings: Mapping[str, Any], host: str) -> list[str]:
    """Ansible entry point of app_name_errors (roles/celery_app's preflight): `settings` holds
    celery_app_name, celery_app_user, celery_app_group and the two folders."""
    return once(app_name_errors(host, settings))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {f.__name__: f for f in (celery_app_name_errors,)}
