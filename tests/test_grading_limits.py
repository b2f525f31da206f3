"""What one submission's code can do to grading, from the instructor's side: an endless loop in
one exercise costs that exercise only, a process it leaves behind (a daemon that detached into a
session of its own) does not outlive its grading, and, graded as root, it runs as a user that
cannot read the solution or another submission."""

import json
import os
import stat
import sys
import tempfile
import time
from pathlib import Path

import pytest
from handouts import fill

from helpers.course import grading, isolation

ROOT = Path(grading.__file__).resolve().parents[2]


def _drop(tmp_path: Path) -> Path:
    """A folder any user can write to, where a submission's code leaves what it found (as root,
    grading runs it as an unprivileged user that cannot write into the test's own folders)."""
    drop = Path(tempfile.mkdtemp(prefix="workbook-drop-"))
    drop.chmod(0o777)
    return drop


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
    pid_file = _drop(tmp_path) / "daemon.pid"
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
    solution = str(ROOT)
    report = _drop(tmp_path) / "report.json"
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


def _modes(*paths: Path) -> dict:
    return {p: stat.S_IMODE(p.stat().st_mode) for p in paths}


@pytest.mark.skipif(not isolation.available(), reason="another user's processes need root on Linux")
def test_as_root_a_submission_cannot_read_the_solution_or_another_submission(
    student, tmp_path, monkeypatch
):
    """Graded as root, with the solution's checkout and the submissions folder world-readable (as
    a clone and a download are): the attacker's code runs as an unprivileged user and can read
    neither the solution's gather nor the victim's, nor list their folders; the victim still gets
    every point; every mode the grader changed is back afterwards."""
    subs = Path(tempfile.mkdtemp(prefix="workbook-subs-"))
    subs.chmod(0o755)
    fill(student, subs / "victim")
    attacker = fill(student, subs / "attacker", keys=set())
    report = _drop(tmp_path) / "report.json"
    targets = [
        ROOT / "helpers" / "models" / "propagation" / "neighbours.py",
        ROOT / "tests" / "test_assignment.py",
        subs / "victim" / "helpers" / "models" / "propagation" / "neighbours.py",
        subs / "victim",
        ROOT,
    ]
    # a link in the submission to the solution, and an installed copy of the workbook on the
    # import path (Gradescope's setup installs the solution into site-packages)
    (attacker / "helpers" / "leak.py").symlink_to(targets[0])
    site = Path(tempfile.mkdtemp(prefix="workbook-site-"))
    site.chmod(0o755)
    (site / "helpers").mkdir()
    (site / "helpers" / "__init__.py").write_text("SOLUTION = 1\n")
    monkeypatch.syspath_prepend(str(site))
    targets += [attacker / "helpers" / "leak.py", site / "helpers" / "__init__.py"]
    init = attacker / "helpers" / "__init__.py"
    init.write_text(
        init.read_text()
        + (
            "\nimport json as _j, os as _o\n"
            "_found = {'uid': _o.getuid(), 'gid': _o.getgid(), 'groups': _o.getgroups()}\n"
            "_here = _o.path.dirname(_o.path.abspath(__file__))\n"
            f"for _t in {[str(t) for t in targets]!r}:\n"
            "    _t = _o.path.join(_here, 'leak.py') if _t.endswith('leak.py') else _t\n"
            "    try:\n"
            "        _found[_t] = 'read' if _o.path.isfile(_t) and open(_t).read() else "
            "'listed ' + str(len(_o.listdir(_t)))\n"
            "    except OSError as _e:\n"
            "        _found[_t] = type(_e).__name__\n"
            f"open({str(report)!r}, 'w').write(_j.dumps(_found))\n"
        )
    )
    watched = [ROOT, subs, Path("/root"), Path(sys.executable).parent]
    before = _modes(*watched)
    doc = grading.grade(subs, timeout=60, jobs=2)
    assert _modes(*watched) == before
    found = json.loads(report.read_text())
    assert found.pop("uid") >= isolation.FIRST_UID and found.pop("gid") == isolation.NOGROUP
    assert found.pop("groups") == []
    leak = str(attacker / "helpers" / "leak.py")
    found = {leak if k.endswith("leak.py") else k: v for k, v in found.items()}
    assert found == {str(t): "PermissionError" for t in targets}
    scores = {s["name"]: s["score"] for s in doc["submissions"]}
    assert scores == {"attacker": 0, "victim": 130}
    assert doc["grader"]["isolation"].startswith("full")


def test_the_guard_restores_every_mode_it_changed(tmp_path):
    """Hidden: the others' bits go; reached: the folders above gain x, the target r (and x); all
    restored on exit, also when grading raises; a needed folder inside a hidden root keeps the root
    reachable and hides its other entries."""
    top = tmp_path / "top"
    (top / "venv" / "lib").mkdir(parents=True)
    (top / "helpers").mkdir()
    (top / "README.md").write_text("solution")
    secret = tmp_path / "subs"
    secret.mkdir()
    for path, mode in [(top, 0o700), (top / "venv", 0o700), (top / "venv" / "lib", 0o750)]:
        path.chmod(mode)
    (top / "helpers").chmod(0o755)
    secret.chmod(0o755)
    watched = [top, top / "venv", top / "venv" / "lib", top / "helpers", top / "README.md", secret]
    before = _modes(*watched)
    needed = [top / "venv" / "lib"]
    hide = isolation.hidden_parts([top, secret], needed)
    assert sorted(hide) == sorted([top / "helpers", top / "README.md", secret])
    with pytest.raises(RuntimeError, match="grading failed"):
        with isolation.Guard(hide, needed):
            during = _modes(*watched)
            raise RuntimeError("grading failed")
    assert during[top] == 0o701 and during[top / "venv"] == 0o701
    assert during[top / "venv" / "lib"] == 0o755
    assert during[top / "helpers"] == 0o750 and during[secret] == 0o750
    assert during[top / "README.md"] & 0o007 == 0
    assert _modes(*watched) == before


def test_without_root_the_grader_says_its_isolation_is_partial(student, tmp_path, monkeypatch):
    monkeypatch.setattr(isolation, "available", lambda: False)
    doc = grading.grade(fill(student, tmp_path / "one", keys={"miou"}), timeout=60)
    assert (
        doc["grader"]["isolation"].startswith("partial")
        and "Gradescope" in doc["grader"]["isolation"]
    )
    assert doc["submissions"][0]["score"] == 10


def test_a_forged_result_file_is_refused_not_followed(tmp_path):
    """The worker's result files are read only as regular files of sane size: a link (to a file
    of root's), a FIFO (which would block the grader) or a huge file is an error for that
    exercise."""
    import torch

    from helpers.course.sandbox import RESULT_LIMIT, _load_result

    good = tmp_path / "good.pt"
    torch.save({"outputs": {"x": torch.ones(2)}, "error": None}, good)
    assert torch.equal(_load_result(good)["outputs"]["x"], torch.ones(2))
    link = tmp_path / "link.pt"
    link.symlink_to(good)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    huge = tmp_path / "huge.pt"
    with open(huge, "wb") as f:
        f.truncate(RESULT_LIMIT + 1)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    for path in (link, fifo, huge, garbage):
        kind, why = _load_result(path)["error"]
        assert kind == "raised" and "result" in why, path


def test_a_terminated_grader_restores_the_modes(tmp_path):
    """SIGTERM (a closed terminal, a job scheduler) while the guard holds: the modes come back."""
    import signal
    import subprocess

    secret = tmp_path / "secret"
    secret.mkdir()
    secret.chmod(0o755)
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from helpers.course.isolation import Guard\n"
        f"with Guard([Path({str(secret)!r})], []):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o750
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert stat.S_IMODE(secret.stat().st_mode) == 0o755
