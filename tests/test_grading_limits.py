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
    assert sum(r.points for r in results) == 130  # the daemon does not change the grade
    deadline = time.monotonic() + 5
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_submission_is_never_shown_where_the_solution_is(student, tmp_path):
    """Code in a submission looks everywhere the grading process could point it at the solution:
    its arguments, environment, import path and hooks, loaded modules (an editable-install finder
    among them) and working folder. None may name the solution's folder."""
    import json
    from pathlib import Path

    solution = str(Path(grading.__file__).resolve().parents[2])
    report = tmp_path / "report.json"
    sub = fill(student, tmp_path / "snoop")
    init = sub / "helpers" / "__init__.py"
    init.write_text(
        init.read_text()
        + (
            "\nimport json as _j, os as _o, sys as _s\n"
            f"_needle = {solution!r}\n"
            "_seen = [('argv', a) for a in _s.argv]\n"
            "_seen += [('env', f'{k}={v}') for k, v in _o.environ.items()]\n"
            "_seen += [('path', str(p)) for p in _s.path] + [('cwd', _o.getcwd())]\n"
            "_seen += [('meta_path', repr(f)) for f in _s.meta_path]\n"
            "_seen += [('path_hooks', repr(h)) for h in _s.path_hooks]\n"
            "for _n, _m in list(_s.modules.items()):\n"
            "    _seen.append(('module', f\"{_n} {getattr(_m, '__file__', '')}\"))\n"
            "    if 'editable' in _n:\n"
            "        _seen.append(('module globals', repr(vars(_m))))\n"
            f"open({str(report)!r}, 'w').write(_j.dumps([s for s in _seen if _needle in s[1]]))\n"
        )
    )
    results = grading.grade_one(sub, timeout=60)
    assert sum(r.points for r in results) == 130  # looking does not change the grade
    assert json.loads(report.read_text()) == []
