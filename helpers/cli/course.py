"""The course's commands: ``assignment OUT`` (the student edition), ``grade PATH`` (into JSON,
CSV or Gradescope's results), ``autograder OUT.zip`` (a Gradescope autograder) and
``references`` (the check cells' reference tensors)."""

from __future__ import annotations

import argparse
import json
import time

COMMANDS = ("assignment", "grade", "autograder", "references")


def add_commands(sub) -> None:
    """The course's sub-commands on the ``python -m helpers`` parser."""
    assignment = sub.add_parser(
        "assignment", help="write the student edition (exercises stubbed, outputs cleared)"
    )
    assignment.add_argument("out", help="a new or empty folder")
    grade = sub.add_parser(
        "grade", help="run the exercise checks on a submission or a folder of submissions"
    )
    grade.add_argument(
        "path", help="a student's copy (a folder with helpers/, or a .zip), or a folder of them"
    )
    grade.add_argument("--json", default="grades.json", help="the grades (default: grades.json)")
    grade.add_argument("--csv", help="also write one row per submission to this CSV file")
    grade.add_argument("--gradescope", help="also write Gradescope's results.json (one submission)")
    grade.add_argument(
        "--seed", type=int, help="the inputs' seed (default: fresh); a recorded seed replays a run"
    )
    grade.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds per exercise (default 60): a hang costs only that exercise",
    )
    grade.add_argument(
        "--jobs", type=int, default=1, help="submissions graded at a time (default 1)"
    )
    autograder = sub.add_parser(
        "autograder", help="write a Gradescope autograder (setup.sh, run_autograder, the grader)"
    )
    autograder.add_argument("out", help="the zip to write (a new file)")
    sub.add_parser(
        "references",
        help="recompute the exercises' reference tensors from this (the solution) edition",
    )


def run(args, parser: argparse.ArgumentParser) -> int:
    """One of :data:`COMMANDS`; a usage error (exit status 2) names what is wrong."""
    from ..core.checkpoint import atomic_write_text
    from ..course import checking, grading
    from ..course.catalogue import EXERCISES, AssignmentError

    try:
        if args.command == "assignment":
            from ..course import edition  # the instructor's tool: not in a hand-out

            written = edition.make_student_edition(args.out)
            print(
                f"student edition: {len(written)} files in {args.out}; its ASSIGNMENT.md lists "
                f"the {len(EXERCISES)} exercises"
            )
        elif args.command == "references":
            from ..course.sources import EDITION

            if EDITION != "solution":  # a student's code would become the reference of its check
                raise AssignmentError(
                    "the reference tensors come from the solution: this copy is "
                    "the student edition, whose references are your instructor's"
                )
            print(f"wrote {checking.make_references()}")
        elif args.command == "autograder":
            from ..course import gradescope  # the instructor's tool: not in a hand-out

            print(
                f"wrote {gradescope.build_autograder(args.out)}: upload it as the assignment's "
                "autograder (Gradescope runs setup.sh once, run_autograder per submission)"
            )
        else:
            started = time.perf_counter()
            try:
                doc = grading.grade(args.path, args.timeout, args.seed, args.jobs)
            except AssignmentError as exc:
                if not args.gradescope:
                    raise
                from ..course import gradescope

                # Gradescope shows the student this output: say what was wrong with the upload
                results = gradescope.results({}, time.perf_counter() - started, str(exc))
                atomic_write_text(json.dumps(results, indent=2) + "\n", args.gradescope)
                print(f"nothing graded: {exc}")
                return 0
            print(grading.format_grades(doc))
            atomic_write_text(json.dumps(doc, indent=2) + "\n", args.json)
            print(f"grades written to {args.json}")
            if args.csv:
                atomic_write_text(grading.grades_csv(doc), args.csv)
                print(f"gradebook rows written to {args.csv}")
            if args.gradescope:
                from ..course import gradescope

                results = gradescope.results(doc, time.perf_counter() - started)
                atomic_write_text(json.dumps(results, indent=2) + "\n", args.gradescope)
                print(f"Gradescope results written to {args.gradescope}")
    except (AssignmentError, FileNotFoundError, FileExistsError) as exc:
        parser.error(str(exc))
    return 0
