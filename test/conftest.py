import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MS_PERCEPTION_SHARED", REPO.parent / "shared"))
KAIST_FIXTURE = SHARED / "fixtures" / "kaist-eval"

# The real ROS 2 graph tests run in their own environment and network namespace
# (scripts/test_ros_graph.sh, called by scripts/test.sh); elsewhere they are not collected.
collect_ignore = [] if os.environ.get("MS_PERCEPTION_ROS_GRAPH") == "1" else ["ros/real"]


@pytest.fixture(scope="session")
def kaist_fixture():
    if not (KAIST_FIXTURE / "gaff_detections.txt").exists():
        if os.environ.get("CI"):  # CI always has ../shared beside the checkout: never skip there
            pytest.fail(f"shared KAIST fixture not found at {KAIST_FIXTURE}")
        pytest.skip(f"shared KAIST fixture not found at {KAIST_FIXTURE} (set MS_PERCEPTION_SHARED)")
    return KAIST_FIXTURE


# A test file that collects no test is a failure (a launch_testing file whose class is not a
# unittest.TestCase ran green for months while testing nothing). Files skipped at import with a
# reason (pytest.importorskip) are reported as skipped, not empty.
_collected: dict[str, int] = {}
_modules: set[str] = set()


def pytest_collectreport(report):
    path = report.nodeid.split("::")[0]
    if "::" not in report.nodeid and path.endswith(".py") and Path(path).name.startswith("test_") \
            and report.outcome == "passed":
        _modules.add(path)


def pytest_itemcollected(item):
    path = item.nodeid.split("::")[0]
    _collected[path] = _collected.get(path, 0) + 1


def pytest_collection_finish(session):
    empty = sorted(m for m in _modules if not _collected.get(m))
    if empty:
        raise pytest.UsageError("test files that collect no test (a file that tests nothing is a failure): "
                                + ", ".join(empty))


def _capture_threads() -> set:
    import threading
    return {t for t in threading.enumerate() if t.name == "ms_perception-capture" and t.is_alive()}


_HOME_CAPTURE = Path("~/ms_perception_capture").expanduser()   # the node's default capture_dir


@pytest.fixture(autouse=True)
def no_capture_writer_left_open():
    """A test that builds a capture writer closes it: a writer left open keeps its thread after the
    test, and a later test in the same worker that counts writer threads saw it (session 36). A test
    does not capture into the user's home either (the node's default folder): one that builds a
    pipeline from the node's defaults says ``capture_enabled: false`` or names a folder under tmp_path."""
    before, home_before = _capture_threads(), _HOME_CAPTURE.exists()
    yield
    left = _capture_threads() - before
    if left:
        pytest.fail(f"{len(left)} capture writer thread(s) left running: close the pipeline's writer "
                    "(pipeline.writer.close()) or build it with capture_enabled: false", pytrace=False)
    if not home_before and _HOME_CAPTURE.exists():
        pytest.fail(f"the test created {_HOME_CAPTURE} (the node's default capture folder): build its pipeline "
                    "with capture_enabled: false or a capture_dir under tmp_path", pytrace=False)
