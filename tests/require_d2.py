"""pytest hooks: with ``OOD_DET_REQUIRE_D2=1`` (set by ``.ci/run`` when it built detectron2 from the
vendored snapshot) a skipped detectron2 test FAILS the session instead of passing silently: any
skip under ``tests/d2/`` and any skip whose reason names detectron2. Without the variable nothing
changes (a fresh clone without detectron2 skips those tests with a reason).

``tests/conftest.py`` imports these hooks; they are in their own module so that a test can run
them on a tiny temporary test tree.
"""
import os

ENV = "OOD_DET_REQUIRE_D2"
_skipped = []


def _required() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def _reason(report) -> str:
    lr = report.longrepr
    return str(lr[-1]) if isinstance(lr, tuple) else str(lr)


def _check(report) -> None:
    if not (_required() and report.skipped):
        return
    reason = _reason(report)
    path = report.nodeid.replace("\\", "/")
    if "tests/d2/" in path or path.startswith("d2/") or "/d2/" in path or "detectron2" in reason:
        _skipped.append(f"{report.nodeid}: {reason}")


def pytest_collectreport(report):
    _check(report)


def pytest_runtest_logreport(report):
    _check(report)


def pytest_sessionfinish(session, exitstatus):
    if _skipped:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _skipped:
        terminalreporter.section(f"{ENV}=1: detectron2 tests were skipped", sep="!", red=True)
        for line in _skipped:
            terminalreporter.line(line)
        terminalreporter.line(f"{len(_skipped)} detectron2 test(s) skipped: failing the run (detectron2 must be "
                              "importable and every detectron2 test must run)")
