"""pytest plugin of tests/driver_suites.rs: runs a driver's own test suite and
writes what became of each test, one line each, to $DRIVER_OUTCOMES:

    start<TAB>nodeid      before a test runs
    passed|failed|skipped<TAB>nodeid    after it

A `start` without its outcome is a test that hung: pytest-timeout
(`--timeout-method=thread`) ended the process there. The Rust side then runs
the suite again, and this plugin leaves out every test the file already
names, so one hang costs one test, not the rest of the suite.

Also left out: the tests listed for this suite ($DRIVER_SUITE) in
$DRIVER_DESELECT (see that file's header), and psycopg2's module-level
`test_suite()` functions, which build unittest suites and test nothing.
"""

import os

import pytest

_outcomes = {}


def _path():
    return os.environ["DRIVER_OUTCOMES"]


def _write(line):
    with open(_path(), "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _deselected():
    """nodeid -> reason, from the deselect file's entries for this suite."""
    suite = os.environ["DRIVER_SUITE"]
    entries = {}
    with open(os.environ["DRIVER_DESELECT"], encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            entry, _, reason = line.partition(" # ")
            parts = entry.split()
            if len(parts) != 2 or not reason.strip():
                raise pytest.UsageError(
                    f"deselect file line {number}: want `SUITE NODEID  # reason`, got {line!r}"
                )
            if parts[0] == suite:
                entries[parts[1]] = reason.strip()
    return entries


def _already_run():
    try:
        with open(_path(), encoding="utf-8") as f:
            return {line.rstrip("\n").split("\t", 1)[1] for line in f if "\t" in line}
    except FileNotFoundError:
        return set()


def pytest_collection_modifyitems(session, config, items):
    deselect = _deselected()
    done = _already_run()
    collected = {item.nodeid for item in items}
    stale = sorted(set(deselect) - collected)
    if stale and not done:
        raise pytest.UsageError(f"deselect entries that name no test: {stale}")
    keep, drop = [], []
    for item in items:
        if item.nodeid in deselect or item.nodeid in done or item.name == "test_suite":
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_runtest_logstart(nodeid, location):
    _write(f"start\t{nodeid}")


def pytest_runtest_logreport(report):
    outcome = _outcomes.get(report.nodeid, "passed")
    if report.failed:
        outcome = "failed"
    elif report.skipped and outcome == "passed":
        outcome = "skipped"
    _outcomes[report.nodeid] = outcome


def pytest_runtest_logfinish(nodeid, location):
    _write(f"{_outcomes.pop(nodeid, 'passed')}\t{nodeid}")
