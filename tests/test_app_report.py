"""Rules that check the real app (inspect_app.py's report) against the layout: pass and fail."""

import contextlib
import copy
import importlib.util
import io
import tarfile
from pathlib import Path

import pytest
from role_settings import fleet

from celery_layout import app_report_errors, celery_app_report_errors

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = {
    "vm1": [
        {"name": "fast", "queues": ["high", "default"], "stop_timeout": 120},
        {"name": "slow", "queues": ["low"], "stop_timeout": 1920},
    ]
}
REPORT = {
    "main": "shop",
    "declared_queues": ["high", "default", "low"],
    "default_queue": "default",
    "route_patterns": ["shop.notify.*", "shop.heavy.*"],
    "tasks": {
        "shop.notify.sms": {"queue": "high", "time_limit": 60},
        "shop.bg.resize": {"queue": "default", "time_limit": None},
        "shop.heavy.scrape": {"queue": "low", "time_limit": 1800},
    },
    "beat": {"hourly-scrape": "shop.heavy.scrape"},
    "visibility_timeout": 7200,
}


def broken(**changes):
    report = copy.deepcopy(REPORT)
    for key, value in changes.items():
        report[key] = value
    return report


def test_sound_app_and_layout():
    assert app_report_errors(REPORT, LAYOUT, ["high", "default", "low"]) == []


def test_route_pattern_matching_no_task():
    errors = app_report_errors(broken(route_patterns=["shop.notfy.*"]), LAYOUT)
    assert errors == [
        "the app's route 'shop.notfy.*' matches no registered task: its tasks fall into "
        "'default' instead. Fix the pattern in the app's task_routes (a typo in a module "
        "name?) or remove it."
    ]


def test_task_in_a_queue_nobody_consumes():
    layout = {"vm1": LAYOUT["vm1"][:1]}
    errors = app_report_errors(REPORT, layout)
    assert errors == [
        "queue 'low' has no consumer: the app sends 1 task(s) there (shop.heavy.scrape), and no "
        "worker group in celery_workers_groups consumes it, so they would wait forever. Add "
        "'low' to the queues of a group, or route them elsewhere."
    ]


def test_task_that_cannot_be_routed():
    tasks = copy.deepcopy(REPORT["tasks"])
    tasks["shop.bg.resize"] = {"queue": None, "error": "QueueNotFound: 'urgent'"}
    errors = app_report_errors(broken(tasks=tasks), LAYOUT)
    assert errors == ["task shop.bg.resize cannot be routed: QueueNotFound: 'urgent'."]


def test_beat_entry_naming_an_unregistered_task():
    errors = app_report_errors(broken(beat={"nightly": "shop.heavy.scrap"}), LAYOUT)
    assert errors == [
        "beat entry 'nightly' sends 'shop.heavy.scrap', which the app does not register: every "
        "run would fail. Fix the task name in the app's beat_schedule."
    ]


def test_visibility_timeout_not_longer_than_longest_task():
    errors = app_report_errors(broken(visibility_timeout=1800), LAYOUT)
    assert len(errors) == 1
    assert (
        "visibility_timeout (1800 s) is not longer than the longest task time limit " in errors[0]
    )
    assert "(1800 s, shop.heavy.scrape)" in errors[0]


def test_visibility_timeout_counts_the_longest_countdown():
    assert app_report_errors(REPORT, LAYOUT, longest_countdown=5000) == []
    errors = app_report_errors(REPORT, LAYOUT, longest_countdown=5400)
    assert len(errors) == 1 and "above 7200 s" in errors[0]


def test_stop_timeout_shorter_than_a_task_of_the_group():
    layout = copy.deepcopy(LAYOUT)
    layout["vm1"][1]["stop_timeout"] = 90
    errors = app_report_errors(REPORT, layout)
    assert errors == [
        "worker group 'slow' on vm1 has stop_timeout 90 s, shorter than the time limit of "
        "shop.heavy.scrape (1800 s) that it runs: a stop or deploy would kill that task. "
        "Set its stop_timeout to at least 1800."
    ]


def test_inventory_queues_differ_from_the_app():
    errors = app_report_errors(REPORT, LAYOUT, ["high", "default"])
    assert errors == [
        "celery_app_queues (high, default) differs from the queues the app uses "
        "(high, default, low): leave celery_app_queues unset (the toolkit reads them from the "
        "app) or make it the same."
    ]


def test_inventory_route_pattern_matching_no_task():
    routes = {"shop.notify.*": "high", "shop.heavvy.*": "low"}
    errors = app_report_errors(REPORT, LAYOUT, routes=routes)
    assert errors == [
        "celery_app_routes pattern 'shop.heavvy.*' matches no task the app registers, so the "
        "tasks meant for it land in 'default': fix the pattern (celery_app_routes mirrors the "
        "app's task_routes), or leave celery_app_routes unset: the toolkit reads the app's "
        "routing."
    ]


def test_group_listening_to_a_queue_no_task_lands_in():
    report = broken(declared_queues=["high", "default", "low", "bulk"])
    layout = {"vm1": [*LAYOUT["vm1"], {"name": "bulk", "queues": ["bulk"], "stop_timeout": 60}]}
    errors = app_report_errors(report, layout)
    assert errors == [
        "queue 'bulk' is consumed by vm1/bulk but no task of the app lands there: those "
        "workers idle. Route tasks to it or drop it from the groups."
    ]


def test_ansible_entry_point_reads_the_layout_from_each_hosts_settings():
    hostvars = {"vm1": {"celery_workers_groups": LAYOUT["vm1"][:1]}}
    errors = celery_app_report_errors(REPORT, ["vm1"], fleet(hostvars))
    assert errors and errors[0].startswith("queue 'low' has no consumer")
    hostvars = {"vm1": {"celery_workers_groups": LAYOUT["vm1"]}}
    assert celery_app_report_errors(REPORT, ["vm1"], fleet(hostvars)) == []


def role_file(name: str):
    """roles/celery_app/files/<name>.py loaded as a module (it puts its folder on sys.path)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / f"roles/celery_app/files/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference_report():
    module = role_file("inspect_app")
    from refapp import app

    return module.report(app)


def test_reference_app_passes_with_the_default_layout(reference_report):
    defaults = ROOT / "roles/celery_workers/defaults/main.yml"
    import yaml

    groups = yaml.safe_load(defaults.read_text())["celery_workers_groups"]
    assert app_report_errors(reference_report, {"vm1": groups}, ["high", "default", "low"]) == []


def test_reference_app_report_resolves_through_its_router(reference_report):
    tasks = reference_report["tasks"]
    assert tasks["refapp.tasks.heavy.scrape_site"]["queue"] == "low"
    assert tasks["refapp.tasks.notifications.send_sms"]["queue"] == "high"
    assert tasks["refapp.tasks.probe.probe"]["queue"] == "default"


# An app as most are: no task_queues, everything in Celery's default queue `celery`, one task
# routed to a queue Celery creates on demand (task_create_missing_queues is on by default).
DEFAULT_QUEUE_APP = {
    "main": "shop",
    "queues": ["celery", "mail"],
    "declared_queues": [],
    "create_missing_queues": True,
    "default_queue": "celery",
    "route_patterns": ["orders.tasks.send_receipt"],
    "tasks": {
        "orders.tasks.send_receipt": {"queue": "mail", "time_limit": 300},
        "orders.tasks.tally": {"queue": "celery", "time_limit": 300},
    },
    "beat": {},
    "visibility_timeout": 3600,
    "transport_error": None,
}


def test_default_queue_app_is_sound_without_inventory_queues():
    layout = {
        "vm1": [
            {"name": "main", "queues": ["celery"], "stop_timeout": 300},
            {"name": "mail", "queues": ["mail"], "stop_timeout": 300},
        ]
    }
    assert app_report_errors(DEFAULT_QUEUE_APP, layout) == []
    assert app_report_errors(DEFAULT_QUEUE_APP, layout, ["mail", "celery"]) == []


def test_group_consuming_a_queue_the_app_does_not_use():
    layout = {"vm1": [{"name": "main", "queues": ["celery", "mial"], "stop_timeout": 300}]}
    errors = app_report_errors(DEFAULT_QUEUE_APP, layout)
    assert errors[0] == (
        "worker group 'main' on vm1 consumes 'mial', not declared by the app (its queues: "
        "celery, mail): fix the queue name in celery_workers_groups."
    )
    assert errors[1].startswith("queue 'mail' has no consumer: the app sends 1 task(s) there")


def test_a_typo_in_a_groups_queue_is_refused_with_celery_app_queues_set_too():
    """The inventory's celery_app_queues (the same as the app's) does not hide a group that
    consumes a queue the app does not use (issue 19: each check counted on the other)."""
    layout = {
        f"vm{n}": [
            {"name": "main", "queues": ["celery", "mail", "emial_tasks"], "stop_timeout": 300}
        ]
        for n in (1, 2, 3)
    }
    errors = app_report_errors(DEFAULT_QUEUE_APP, layout, ["celery", "mail"])
    assert errors == [
        "worker group 'main' on vm1, vm2 and vm3 consumes 'emial_tasks', not declared by the app "
        "(its queues: celery, mail): fix the queue name in celery_workers_groups."
    ]


def test_inventory_route_that_disagrees_with_the_app():
    layout = {"vm1": [{"name": "main", "queues": ["celery", "mail"], "stop_timeout": 300}]}
    errors = app_report_errors(DEFAULT_QUEUE_APP, layout, routes={"orders.tasks.*": "mail"})
    assert errors == [
        "celery_app_routes sends 'orders.tasks.*' to queue 'mail', but the app sends "
        "orders.tasks.tally to 'celery': make celery_app_routes mirror the app's task_routes, "
        "or leave it unset: the toolkit reads the app's routing."
    ]


def test_broker_client_that_does_not_load():
    layout = {"vm1": [{"name": "main", "queues": ["celery", "mail"], "stop_timeout": 300}]}
    report = {
        **DEFAULT_QUEUE_APP,
        "transport_error": "ModuleNotFoundError: No module named 'redis'",
    }
    assert app_report_errors(report, layout) == [
        "the app's broker client does not load (ModuleNotFoundError: No module named 'redis'): "
        "every worker would crash at start. Keep celery[redis] in "
        "celery_app_broker_requirements (the default), or add the missing module to the app's "
        "requirements."
    ]


def _archive(tmp_path, *members):
    """A tar archive of (name, kind, link target) members: kind 'file', 'dir' or 'sym'."""
    archive = tmp_path / "app.tar"
    with tarfile.open(archive, "w") as tar:
        for name, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            else:
                info.size = 2
                tar.addfile(info, io.BytesIO(b"x\n"))
    return tarfile.open(archive)


@pytest.mark.parametrize("filter_known", [True, False], ids=["python-3.11.4+", "python-3.11.2"])
def test_the_apps_archive_extracts_inside_its_folder_only(tmp_path, monkeypatch, filter_known):
    """Debian bookworm's Python (3.11.2) has no tarfile filter: report_app.py checks the same
    rule itself (a controller on bookworm failed with a TypeError traceback before)."""
    report_app = role_file("report_app")
    if not filter_known:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python's tarfile has no data filter")
    with _archive(
        tmp_path, ("shop", "dir", ""), ("shop/a.py", "file", ""), ("shop/b.py", "sym", "a.py")
    ) as sound:
        report_app.extract(sound, tmp_path / "src")
    assert (tmp_path / "src/shop/b.py").read_text() == "x\n"
    # refused, or (tarfile's filter) made relative: nothing lands or points outside the folder
    out = tmp_path / "work/out"
    out.mkdir(parents=True)
    # an absolute name inside tmp_path: a broken check writes there, not into /
    absolute = str(tmp_path / "work/abs.py")
    for bad in [("../evil.py", "file", ""), (absolute, "file", ""), ("shop/l", "sym", "/etc/x")]:
        (tmp_path / "bad").mkdir(exist_ok=True)
        with (
            _archive(tmp_path / "bad", bad) as tar,
            contextlib.suppress(SystemExit, tarfile.TarError),
        ):
            report_app.extract(tar, out)
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["out"]
    assert not any(p.is_symlink() for p in out.rglob("*")), sorted(out.rglob("*"))
