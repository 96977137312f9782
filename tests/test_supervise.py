"""The supervisor wrapper (roles/celery_app/files/celery_supervise.py) reads environment files
and expands a command as systemd does, passes signals to its child only, drains a worker before
forwarding SIGTERM, and runs the recovery after an unclean end; and the controller's wheelhouse
lock lets one build of the same inputs run at a time, and a wheelhouse gets one archive."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

FILES = Path(__file__).resolve().parent.parent / "roles/celery_app/files"
sys.path.insert(0, str(FILES))

import build_wheelhouse  # noqa: E402
import celery_supervise  # noqa: E402


def test_environment_files_are_read_as_systemd_reads_them(tmp_path):
    env = tmp_path / "worker.env"
    env.write_text(
        "# a comment\n\nCELERY_APP=refapp\n"
        "CELERY_WORKER_OPTS=--queues=high,default --concurrency=4\n"
        'QUOTED="a b \\$HOME $(x)"\n; another comment\n'
    )
    # the wrapper's reader is the one <app>-run uses (tests/test_celery_quote.py tests it)
    assert celery_supervise.read_env_file(str(env)) == {
        "CELERY_APP": "refapp",
        "CELERY_WORKER_OPTS": "--queues=high,default --concurrency=4",
        "QUOTED": "a b $HOME $(x)",
    }


def test_command_expansion_splits_a_bare_variable_and_keeps_a_braced_one():
    env = {"CELERY_APP": "shop", "CELERY_WORKER_OPTS": "--queues=celery --concurrency=2"}
    command = ["celery", "-A", "${CELERY_APP}", "worker", "$CELERY_WORKER_OPTS", "--x=${MISSING}"]
    assert celery_supervise.expand(command, env) == [
        "celery",
        "-A",
        "shop",
        "worker",
        "--queues=celery",
        "--concurrency=2",
        "--x=",
    ]


def fake_helpers(folder: Path) -> None:
    """celery_drain.py and celery_recover.py stand-ins that write what they were asked."""
    for name in ("celery_drain.py", "celery_recover.py"):
        (folder / name).write_text(
            "import os, sys\n"
            f"open(os.environ['CALLS'], 'a').write('{name} ' + ' '.join(sys.argv[1:])"
            " + ' ' + os.environ.get('SERVICE_RESULT', '-') + '\\n')\n"
        )


# The child writes "ready" once its handler is in place, and "TERM" when SIGTERM reaches it.
CHILD = """
import os, signal, sys, time
def on_term(*_):
    open(os.environ["CALLS"], "a").write("TERM\\n")
    sys.exit(0)  # Celery's warm shutdown
signal.signal(signal.SIGTERM, on_term)
open(os.environ["CALLS"], "a").write("ready\\n")
if "--die" in sys.argv:
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(30)
"""


def run_wrapper(tmp_path: Path, *child_args: str, options=(), send=None):
    # installed as on a host: the env-file reader beside the wrapper
    for name in ("celery_supervise.py", "celery_envfile.py"):
        (tmp_path / name).write_text((FILES / name).read_text())
    wrapper = tmp_path / "celery_supervise.py"
    fake_helpers(tmp_path)
    calls = tmp_path / "calls"
    calls.write_text("")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(wrapper), "--drain", "fast@%h", *options, "--"]
        + [sys.executable, str(script), *child_args],
        env={**os.environ, "CALLS": str(calls), "CELERY_DRAIN_TIMEOUT": "7"},
    )
    deadline = time.monotonic() + 20
    while "ready" not in calls.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    if send:
        send(proc)
    rc = proc.wait(30)
    return rc, [line for line in calls.read_text().splitlines() if line != "ready"]


def test_sigterm_drains_first_then_reaches_the_child_and_counts_as_clean(tmp_path):
    rc, calls = run_wrapper(tmp_path, send=lambda p: p.send_signal(signal.SIGTERM))
    assert rc == 0
    assert len(calls) == 2 and calls[0].startswith("celery_drain.py fast@"), calls
    assert calls[0].split()[2] == "7"  # the group's drain timeout
    assert "%h" not in calls[0]
    assert calls[1] == "TERM"  # only after the drain: never the other way round


def test_a_killed_child_is_recovered_after_and_the_wrapper_fails(tmp_path):
    rc, calls = run_wrapper(tmp_path, "--die")
    assert rc == 128 + signal.SIGKILL
    assert calls == ["celery_recover.py --if-unclean --margin 5 signal"]


def test_a_start_after_the_wrapper_was_killed_recovers_first(tmp_path):
    """kill -9 of the wrapper (a stop that outlasted stopwaitsecs): no recovery could run then;
    the next start finds its marker and gives back what the last run held, once."""
    state = tmp_path / "state"
    state.mkdir()
    rc, calls = run_wrapper(
        tmp_path, options=("--state", str(state)), send=lambda p: p.send_signal(signal.SIGKILL)
    )
    assert rc == -signal.SIGKILL
    assert len(list(state.glob("fast@*.running"))) == 1
    # the child, orphaned, gets SIGTERM (parent death): a warm shutdown, not a run unsupervised
    deadline = time.monotonic() + 10
    while "TERM" not in (tmp_path / "calls").read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "calls").read_text().split() == ["ready", "TERM"]
    rc, calls = run_wrapper(
        tmp_path, options=("--state", str(state)), send=lambda p: p.send_signal(signal.SIGTERM)
    )
    assert rc == 0
    assert calls[0] == "celery_recover.py --if-unclean --margin 5 signal"
    assert calls[1].startswith("celery_drain.py") and calls[2] == "TERM"
    assert list(state.glob("*.running")) == []  # a clean end leaves no marker


def test_the_wheelhouse_lock_lets_one_build_run_at_a_time(tmp_path):
    lock, events = tmp_path / ".house.lock", []

    def hold(name):
        with build_wheelhouse.locked(lock):
            events.append(f"{name} in")
            time.sleep(0.3)
            events.append(f"{name} out")

    first = threading.Thread(target=hold, args=("a",))
    first.start()
    time.sleep(0.1)
    hold("b")
    first.join()
    assert events == ["a in", "a out", "b in", "b out"]


def test_a_wheelhouse_gets_one_archive_of_its_files_made_once(tmp_path):
    import tarfile

    house = tmp_path / "py3.11.2-x86_64-0123456789abcdef"
    house.mkdir()
    (house / "wheelhouse.json").write_text("{}\n")
    (house / "vine-5.1.0-py3-none-any.whl").write_bytes(b"wheel")
    archive = build_wheelhouse.ensure_archive(house)
    assert archive == tmp_path / "py3.11.2-x86_64-0123456789abcdef.tar"
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == ["vine-5.1.0-py3-none-any.whl", "wheelhouse.json"]
        assert tar.extractfile("vine-5.1.0-py3-none-any.whl").read() == b"wheel"
    made = archive.stat().st_mtime_ns
    assert build_wheelhouse.ensure_archive(house) == archive
    assert archive.stat().st_mtime_ns == made
    assert sorted(p.name for p in tmp_path.iterdir()) == [house.name, archive.name]
