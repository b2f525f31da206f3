"""``python -m helpers ...``: the command line (``run``, ``figures``, ``assignment``, ``grade``,
``references``); each command's work lives in its own module.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..core.config import PROFILES, check_settings
from .run import NOTEBOOK_DIR, run_command

FIGURE_DIR = NOTEBOOK_DIR / "figures"


def write_figures(args) -> int:
    """``python -m helpers figures``: the README's figures from the whole trained chain."""
    from ..core.checkpoint import display_path
    from ..workbook.figures import save_readme_figures
    from ..workbook.session import open_workbook
    from ..workbook.workflow import all_stages

    wb = open_workbook(args.profile, args.data_root, args.seed)
    if wb.source.kind != "synthetic":
        print(
            "note: these figures show images of the dataset in use; do not commit figures of data "
            "you may not share"
        )
    for path in save_readme_figures(wb, all_stages(wb, converged=False), Path(args.out)):
        print(f"wrote {display_path(path)}")
    return 0


def _assignment_command(args, parser) -> int:
    """``assignment OUT``, ``grade PATH`` and ``references``: see :mod:`helpers.course.edition`."""
    import json

    from ..core.checkpoint import atomic_write_text
    from ..course import checking, edition, grading
    from ..course.catalogue import EXERCISES

    try:
        if args.command == "assignment":
            written = edition.make_student_edition(args.out)
            print(
                f"student edition: {len(written)} files in {args.out}; its ASSIGNMENT.md lists the "
                f"{len(EXERCISES)} exercises"
            )
        elif args.command == "references":
            print(f"wrote {checking.make_references()}")
        else:
            doc = grading.grade(args.path, args.timeout, args.seed)
            print(grading.format_grades(doc))
            if args.csv:
                atomic_write_text(grading.grades_csv(doc), args.csv)
                print(f"gradebook rows written to {args.csv}")
            atomic_write_text(json.dumps(doc, indent=2) + "\n", args.json)
            print(f"grades written to {args.json}")
    except (edition.AssignmentError, FileNotFoundError) as exc:
        parser.error(str(exc))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers", description="Run the workbook headless."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="execute the numbered notebooks in order and write results.json"
    )
    run.add_argument("--profile", choices=PROFILES, help="overrides WORKBOOK_PROFILE")
    run.add_argument("--data-root", help="a folder holding oxford-iiit-pet/ (overrides PETS_ROOT)")
    run.add_argument("--seed", type=int, help="overrides WORKBOOK_SEED")
    run.add_argument(
        "--only", nargs="+", help="run only notebooks whose name starts with these prefixes"
    )
    run.add_argument(
        "--cell-timeout", type=int, default=3600, help="seconds one cell may run (default 3600)"
    )
    figures = sub.add_parser(
        "figures",
        help="write the README's figures from the trained stages (trains what is missing)",
    )
    figures.add_argument("--profile", choices=PROFILES, help="overrides WORKBOOK_PROFILE")
    figures.add_argument(
        "--data-root", help="a folder holding oxford-iiit-pet/ (overrides PETS_ROOT)"
    )
    figures.add_argument("--seed", type=int, help="overrides WORKBOOK_SEED")
    figures.add_argument(
        "--out", default=str(FIGURE_DIR), help="output folder (default: notebooks/figures)"
    )
    assignment = sub.add_parser(
        "assignment", help="write the student edition (exercises stubbed, outputs cleared)"
    )
    assignment.add_argument("out", help="a new or empty folder")
    grade = sub.add_parser(
        "grade", help="run the exercise checks on a submission or a folder of submissions"
    )
    grade.add_argument(
        "path", help="a student's copy (a folder with helpers/) or a folder of such copies"
    )
    grade.add_argument("--csv", help="also write one row per submission to this CSV file")
    grade.add_argument(
        "--seed", type=int, help="the inputs' seed (default: fresh); a recorded seed replays a run"
    )
    grade.add_argument(
        "--json", default="grades.json", help="where to write the grades (default: grades.json)"
    )
    grade.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds per exercise (default 60): a hang costs only that exercise",
    )
    sub.add_parser(
        "references",
        help="recompute the exercises' reference tensors from this (the solution) edition",
    )
    args = parser.parse_args(argv)
    if args.command in ("assignment", "grade", "references"):
        return _assignment_command(args, parser)
    if args.command == "figures":
        from ..core.checkpoint import CheckpointError
        from ..data.sources import DataError
        from ..training.loop import TrainingDiverged

        try:
            check_settings(
                args.profile or os.environ.get("WORKBOOK_PROFILE") or "cpu",
                str(args.seed) if args.seed is not None else os.environ.get("WORKBOOK_SEED", "0"),
            )
            return write_figures(args)
        except (ValueError, DataError, CheckpointError, TrainingDiverged) as exc:
            figures.error(str(exc))  # one line and argparse's exit status 2, not a traceback
    return run_command(args, run)
