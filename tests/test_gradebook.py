"""Grades into a gradebook, from the instructor's side: what they collected (folders, a folder
nested one level deeper, .zip archives, stray files), the CSV they import, the record that lets a
regrade replay the run, and archives that try to write outside their folder."""

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
from handouts import fill

from helpers.cli.main import main
from helpers.course import grading, submissions
from helpers.course.catalogue import EXERCISES, AssignmentError

KEYS = [e.key for e in EXERCISES]


def _zip(folder: Path, archive: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, prefix + path.relative_to(folder).as_posix())
    return archive


def test_a_collected_folder_is_graded_into_csv_and_json(student, tmp_path, capsys):
    subs = tmp_path / "collected"
    fill(student, subs / "alice")
    fill(student, subs / "bob", keys={"miou", "neighbours", "cspn-step"})
    fill(student, subs / "carol-download" / "handout-main")  # unpacked into a folder of its own
    _zip(fill(student, tmp_path / "dave"), subs / "dave.zip", prefix="dave/")
    (subs / "notes.txt").write_text("grade carefully")
    (subs / "empty").mkdir()
    assert (
        main(
            [
                "grade",
                str(subs),
                "--json",
                str(tmp_path / "g.json"),
                "--csv",
                str(tmp_path / "g.csv"),
                "--seed",
                "11",
                "--jobs",
                "2",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert "skipped notes.txt" in err and "skipped empty" in err
    # the instructor is told how far the submissions' code was kept apart
    from helpers.course import isolation

    if isolation.available():
        assert "isolation full" in out and "permissions changed while grading" in out
    else:
        assert "isolation partial" in out and "Gradescope" in out

    rows = list(csv.DictReader(io.StringIO((tmp_path / "g.csv").read_text())))
    assert [r["name"] for r in rows] == ["alice", "bob", "carol-download", "dave"]
    assert list(rows[0]) == ["name", "score", "max_score", *KEYS]
    by_name = {r["name"]: r for r in rows}
    assert (
        by_name["alice"]["score"]
        == by_name["dave"]["score"]
        == by_name["carol-download"]["score"]
        == "130"
    )
    assert by_name["bob"]["score"] == "40" and by_name["bob"]["miou"] == "10"
    assert by_name["bob"]["cspn-step"] == "15" and by_name["bob"]["dyspn-step"] == "0"

    doc = json.loads((tmp_path / "g.json").read_text())
    grader = doc["grader"]
    assert grader["seed"] == 11 and grader["timeout_s"] == 60.0 and grader["jobs"] == 2
    paths = {s["name"]: s["path"] for s in doc["submissions"]}
    assert paths["dave"] == str(subs / "dave.zip")  # what was handed in, not a temporary copy
    assert len(grader["solution_sha256"]) == 64 and grader["version"] and grader["torch"]
    assert {"date", "python"} <= set(grader)
    assert len(doc["warnings"]) == 2
    # today's fields stay
    first = doc["submissions"][0]
    assert {"name", "path", "score", "max_score", "exercises"} <= set(first)
    assert {"key", "points", "max_points", "passed", "message"} <= set(first["exercises"][0])


def test_a_recorded_seed_replays_the_grading_exactly(student, tmp_path):
    """A regrade request: the same seed gives the same inputs, so the same relative errors."""
    sub = fill(student, tmp_path / "subs" / "eve")
    prop = sub / "helpers" / "models" / "propagation" / "propagators.py"
    right = "G = (p[:, : self.rings] * A).sum(1, keepdim=True) + p[:, self.rings :] + EPS"
    assert right in prop.read_text()
    prop.write_text(prop.read_text().replace(right, right.replace(" + EPS", " * 1.1 + EPS")))
    first = grading.grade(tmp_path / "subs", seed=5)
    again = grading.grade(tmp_path / "subs", seed=5)
    other = grading.grade(tmp_path / "subs", seed=6)

    def message(doc):
        return doc["submissions"][0]["exercises"][KEYS.index("dyspn-step")]["message"]

    assert "relative error" in message(first) and message(first) == message(again)
    assert message(other) != message(first)  # other inputs, another relative error
    assert first["grader"]["seed"] == again["grader"]["seed"] == 5


def test_a_zip_that_writes_outside_its_folder_is_refused_and_named(tmp_path):
    subs = tmp_path / "collected"
    (subs / "honest" / "helpers").mkdir(parents=True)
    with zipfile.ZipFile(subs / "mallory.zip", "w") as zf:
        zf.writestr("helpers/__init__.py", "")
        zf.writestr("../../escaped.txt", "outside")
    found, warnings = submissions.find_submissions(subs, tmp_path / "unpacked")
    assert [s.name for s in found] == ["honest"]
    assert len(warnings) == 1 and "mallory.zip" in warnings[0] and "outside" in warnings[0]
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_zip_bomb_and_a_link_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(submissions, "MAX_ZIP_BYTES", 1000)
    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("helpers/__init__.py", "0" * 5000)
    with pytest.raises(AssignmentError, match="big.zip: .* unpacked"):
        submissions.extract_zip(tmp_path / "big.zip", tmp_path / "out1")
    link = zipfile.ZipInfo("helpers/evil")
    link.external_attr = 0o120777 << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(AssignmentError, match="link.zip: entry 'helpers/evil' is a link"):
        submissions.extract_zip(tmp_path / "link.zip", tmp_path / "out2")
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(AssignmentError, match="broken.zip: not a readable zip"):
        submissions.extract_zip(tmp_path / "broken.zip", tmp_path / "out3")


def test_nothing_to_grade_lists_what_was_skipped(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(AssignmentError, match=r"holds no submission(.|\n)*skipped readme.txt"):
        submissions.find_submissions(tmp_path, tmp_path / "unpacked")


def test_the_solution_earns_full_marks_on_every_fresh_draw(student, tmp_path):
    """Eight gradings of the solution, each on fresh random inputs: 130 every time (a check that
    is right only on some inputs would fail a right answer sooner or later)."""
    solved = fill(student, tmp_path / "solution")
    seeds, scores = set(), []
    for _ in range(8):
        doc = grading.grade(solved)
        seeds.add(doc["grader"]["seed"])
        scores.append(doc["submissions"][0]["score"])
    assert scores == [130] * 8 and len(seeds) == 8


def test_each_part_of_an_exercise_earns_its_own_points(student, tmp_path):
    """A step whose values are right but whose gradient is cut (``.detach()``): the values' parts
    earn their points, the gradients' part none, and the message lists every part's score."""
    sub = fill(student, tmp_path / "detached")
    prop = sub / "helpers" / "models" / "propagation" / "propagators.py"
    cuts = [
        "return base + (kappa[:, None] * gather(d, self.kernel)).sum(2)",
        "S = base if d is None else base + self.ring_sums(d, pos)",
    ]
    text = prop.read_text()
    for right in cuts:
        assert right in text
        text = text.replace(right, right.replace("(d, ", "(d.detach(), "))
    prop.write_text(text)
    results = {r.key: r for r in grading.grade_one(sub)}
    cspn, dyspn = results["cspn-step"], results["dyspn-step"]
    assert not cspn.passed and cspn.points == 11 and cspn.max_points == 15
    assert [(p["name"], p["points"]) for p in cspn.parts] == [
        ("base", 3),
        ("the first step", 4),
        ("three steps", 4),
        ("gradients", 0),
    ]
    assert "(base 3/3, the first step 4/4, three steps 4/4, gradients 0/4)" in cspn.message
    assert not dyspn.passed and dyspn.points == 5 + 5 + 7 and dyspn.max_points == 25
    assert sum(r.points for r in results.values()) == 130 - 4 - 8


def test_the_grading_benchmark_times_each_jobs_setting_on_the_same_submissions(capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "grading.py"
    spec = importlib.util.spec_from_file_location("grading_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--count", "2", "--jobs", "1", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.startswith("--jobs")]
    assert len(rows) == 2 and all("s per submission" in r and "200 submissions" in r for r in rows)
    assert all("scores [0, 130]" in r for r in rows)  # one solved, one blank, in both runs
