"""Run one Celery process under supervisord with the stop semantics of the toolkit's systemd
units (the command of every supervisor program the toolkit writes):

    <app>-run --supervised [--env FILE]... [--drain NODE [--state DIR]] -- COMMAND...
    (the run helper execs this script as the app's user, with the app's environment)

supervisord has no ExecStop or ExecStopPost, and passes no environment file. This wrapper:
- reads each --env FILE into the environment with celery_envfile.py (systemd's EnvironmentFile=
  grammar; `<app>-run` reads the app's file with it too; no shell), and expands ${NAME} (one
  argument) and $NAME (split on whitespace) in COMMAND, as systemd does;
- runs COMMAND as its child, and forwards SIGTERM, SIGINT, SIGQUIT and SIGHUP to it only (the
  pool children are never signalled: a warm shutdown); if the wrapper itself is killed, the
  child gets SIGTERM (a warm shutdown) rather than run on unsupervised;
- with --drain NODE (a worker group): on SIGTERM, first drains the worker (celery_drain.py:
  stop consuming, finish and acknowledge what it holds, at most $CELERY_DRAIN_TIMEOUT seconds),
  then forwards SIGTERM; after an unclean end of the worker (killed, a crash) gives back the
  tasks it held (celery_recover.py --if-unclean), as the units' ExecStop and ExecStopPost do;
- with --state DIR, keeps a marker there while the worker runs: a start that finds one (the
  last run was killed with its wrapper: a stop that outlasted stopwaitsecs, kill -9, OOM, a
  power loss) first gives back what that run left unacknowledged.
Exits with the child's status, so supervisord restarts it (autorestart) as systemd would.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from celery_envfile import read_env_file

# celery_drain.py and celery_recover.py (roles/celery_workers) are installed beside this script,
# celery_envfile.py too (imported from this script's folder, first on sys.path)
HERE = Path(__file__).resolve().parent
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP)


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """systemd's ExecStart expansion: "$NAME" alone is split on whitespace, "${NAME}" is not."""
    out: list[str] = []
    for arg in args:
        whole = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", arg)
        if whole:
            out += shlex.split(env.get(whole.group(1), ""))
            continue
        out.append(
            re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), arg)
        )
    return out


def in_child() -> None:
    """In the child, before it runs COMMAND: the signals the wrapper blocked while it started
    are unblocked, and a SIGTERM comes when this wrapper dies (kill -9 of what `supervisorctl
    pid` shows), so Celery shuts down warmly instead of running on unsupervised."""
    import ctypes

    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def helper(script: str, *args: str, env: dict[str, str] | None = None) -> None:
    """Run a toolkit helper with this Python; its output goes to the program's log."""
    subprocess.run([sys.executable, str(HERE / script), *args], env=env, check=False)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(__doc__, file=sys.stderr)
        return 2
    options, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    env_files = [options[i + 1] for i, o in enumerate(options) if o == "--env"]
    drain_node = next((options[i + 1] for i, o in enumerate(options) if o == "--drain"), "")
    drain_node = drain_node.replace("%h", socket.gethostname())  # as celery --hostname does
    state_dir = next((options[i + 1] for i, o in enumerate(options) if o == "--state"), "")
    marker = Path(state_dir) / f"{drain_node}.running" if state_dir and drain_node else None
    for path in env_files:
        os.environ.update(read_env_file(path, warn=lambda message: print(message, file=sys.stderr)))
    if marker and marker.exists():
        recover()  # the last run ended with no chance to do it
    if marker:
        marker.write_text(f"{os.getpid()}\n")
    stopping = threading.Event()
    child: subprocess.Popen | None = None

    def stop(signum: int) -> None:
        if signum == signal.SIGTERM and drain_node:
            timeout = os.environ.get("CELERY_DRAIN_TIMEOUT", "60")
            helper("celery_drain.py", drain_node, timeout, str(child.pid))
        if child.poll() is None:
            child.send_signal(signum)

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()
        # the drain takes seconds: never inside the handler, so a second signal still passes
        threading.Thread(target=stop, args=(signum,), daemon=True).start()

    # a signal that comes while the child starts waits until the handlers are in place
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
    child = subprocess.Popen(expand(command, dict(os.environ)), preexec_fn=in_child)
    for signum in FORWARDED:
        signal.signal(signum, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
    status = child.wait()
    clean = status == 0 or (stopping.is_set() and status in (-signal.SIGTERM, -signal.SIGINT))
    if drain_node and not clean:
        recover(signal_ended=status < 0)
    if marker:
        marker.unlink(missing_ok=True)
    return 128 - status if status < 0 else status


def recover(signal_ended: bool = True) -> None:
    """Give back the tasks the worker held and no live worker holds (SERVICE_RESULT as systemd
    would set it after an unclean end: anything but "success")."""
    helper(
        "celery_recover.py",
        "--if-unclean",
        "--margin",
        "5",
        env={**os.environ, "SERVICE_RESULT": "signal" if signal_ended else "exit-code"},
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
