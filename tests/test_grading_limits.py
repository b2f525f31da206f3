"""What one submission's code can do to grading, from the instructor's side: an endless loop in
one exercise costs that exercise only, and a process it leaves behind (a daemon that detached
into a session of its own) does not outlive its grading."""

import os
import sys
import time

import pytest
from handouts import fill

from helpers.course import grading


def _by_key(results) -> dict:
    return {r.key: r for r in results}


def test_a_hang_in_one_exercise_costs_only_that_exercise(student, tmp_path):
    sub = fill(student, tmp_path / "loop")
    prop = sub / "helpers" / "models" / "propagation" / "propagators.py"
    right = "        if d is None:  # D^0 = 0: the neighbour sum vanishes\n"
    assert right in prop.read_text()
    prop.write_text(
        prop.read_text().replace(right, "        while True:\n            pass\n" + right)
    )
    results = _by_key(grading.grade_one(sub, timeout=5))
    assert not results["cspn-step"].passed
    assert "did not finish within 5 s" in results["cspn-step"].message
    others = [r for k, r in results.items() if k != "cspn-step"]
    assert all(r.passed and r.points == r.max_points for r in others), [r.message for r in others]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the subreaper is Linux's")
def test_a_daemon_started_by_a_submission_is_gone_when_its_grading_ends(student, tmp_path):
    sub = fill(student, tmp_path / "daemon")
    pid_file = tmp_path / "daemon.pid"
    init = sub / "helpers" / "__init__.py"
    init.write_text(
        init.read_text()
        + (
            "\nimport os as _os, time as _time\n"
            "if _os.fork() == 0:\n"  # the classic double fork: child, new session, grandchild
            "    _os.setsid()\n"
            "    if _os.fork() == 0:\n"
            f"        open({str(pid_file)!r}, 'w').write(str(_os.getpid()))\n"
            "        _time.sleep(300)\n"
            "    _os._exit(0)\n"
        )
    )
    results = grading.grade_one(sub, timeout=30)
    assert sum(r.points for r in results) == 100  # the daemon does not change the grade
    deadline = time.monotonic() + 5
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
